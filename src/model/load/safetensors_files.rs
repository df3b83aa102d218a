//! safetensors checkpoints read tensor by tensor with positioned reads instead of a memory map.
//! A mapped file's pages count in the process's resident memory for as long as the map is open,
//! so mapping the checkpoint while the model repacks (or widens) its matrices held the file and
//! the model at once: at the peak, about twice the file in bf16. Read here, the process holds
//! the model it builds plus the one tensor being converted; the file stays in the page cache.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use safetensors::tensor::{Metadata, TensorInfo, TensorView};

/// The largest header accepted (the `safetensors` crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// One tensor's place: which file, where its bytes start, its dtype and shape.
struct Entry {
    file: usize,
    start: u64,
    info: TensorInfo,
}

/// A `VarBuilder` over the tensors of one or more safetensors files (the shards of a
/// checkpoint), converted to `dtype` on `device` as they are read. An unreadable or inconsistent
/// file is an error that names it.
pub fn var_builder(
    paths: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> std::result::Result<VarBuilder<'static>, String> {
    let files = SafetensorsFiles::open(paths)?;
    Ok(VarBuilder::from_backend(
        Box::new(files),
        dtype,
        device.clone(),
    ))
}

/// The tensors of one or more safetensors files.
struct SafetensorsFiles {
    files: Vec<(PathBuf, File)>,
    tensors: HashMap<String, Entry>,
}

impl SafetensorsFiles {
    /// Opens the files and reads their headers.
    fn open(paths: &[PathBuf]) -> std::result::Result<Self, String> {
        let mut files = Vec::with_capacity(paths.len());
        let mut tensors = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            let fail = |what: String| format!("{}: {what}", path.display());
            let file = File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
            let size = file
                .metadata()
                .map_err(|e| fail(format!("cannot read its size: {e}")))?
                .len();
            let (data_start, metadata) = read_header(&file, size).map_err(fail)?;
            for (name, info) in metadata.tensors() {
                let (start, end) = info.data_offsets;
                if start > end || data_start + end as u64 > size {
                    return Err(fail(format!(
                        "tensor {name} lies outside the file ({size} bytes)"
                    )));
                }
                let entry = Entry {
                    file: index,
                    start: data_start + start as u64,
                    info: info.clone(),
                };
                tensors.insert(name, entry);
            }
            files.push((path.clone(), file));
        }
        Ok(Self { files, tensors })
    }

    /// The tensor `name` on `device`, in its stored dtype.
    fn read(&self, name: &str, device: &Device) -> Result<Tensor> {
        let Some(entry) = self.tensors.get(name) else {
            return Err(candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt());
        };
        let (path, file) = &self.files[entry.file];
        let (start, end) = entry.info.data_offsets;
        let mut bytes = vec![0u8; end - start];
        file.read_exact_at(&mut bytes, entry.start).map_err(|e| {
            candle_core::Error::Msg(format!("{}: cannot read {name}: {e}", path.display()))
        })?;
        let view = TensorView::new(entry.info.dtype, entry.info.shape.clone(), &bytes)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {name}: {e}", path.display())))?;
        view.load(device)
    }
}

/// Where the tensor data starts, and the header.
fn read_header(file: &File, size: u64) -> std::result::Result<(u64, Metadata), String> {
    let mut length = [0u8; 8];
    file.read_exact_at(&mut length, 0)
        .map_err(|e| format!("not a safetensors file (no header length): {e}"))?;
    let length = u64::from_le_bytes(length);
    if length > MAX_HEADER || 8 + length > size {
        return Err(format!(
            "not a safetensors file (a header of {length} bytes in a file of {size})"
        ));
    }
    let mut header = vec![0u8; length as usize];
    file.read_exact_at(&mut header, 8)
        .map_err(|e| format!("cannot read the header: {e}"))?;
    let metadata: Metadata = serde_json::from_slice(&header)
        .map_err(|e| format!("not a safetensors file (bad header: {e})"))?;
    Ok((8 + length, metadata))
}

impl SimpleBackend for SafetensorsFiles {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let tensor = self.read(name, device)?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: tensor.shape().clone(),
            }
            .bt());
        }
        tensor.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        self.read(name, device)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn write(dir: &Path, name: &str, tensors: &[(&str, Tensor)]) -> PathBuf {
        let path = dir.join(name);
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        candle_core::safetensors::save(&map, &path).expect("save");
        path
    }

    #[test]
    fn tensors_read_back_as_written_across_shards_and_dtypes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .and_then(|t| t.reshape((3, 4)))
            .expect("a");
        let b = a.to_dtype(DType::BF16).expect("b");
        let first = write(dir.path(), "one.safetensors", &[("a", a.clone())]);
        let second = write(dir.path(), "two.safetensors", &[("b", b.clone())]);
        let files = SafetensorsFiles::open(&[first, second]).expect("open");
        assert!(files.contains_tensor("a") && files.contains_tensor("b"));
        let got = files
            .get(
                (3, 4).into(),
                "b",
                candle_nn::Init::Const(0.),
                DType::F32,
                &Device::Cpu,
            )
            .expect("b");
        assert_eq!(got.dtype(), DType::F32);
        let want: Vec<Vec<f32>> = a.to_vec2().expect("a");
        assert_eq!(got.to_vec2::<f32>().expect("got"), want);
        let wrong = files.get(
            (4, 3).into(),
            "a",
            candle_nn::Init::Const(0.),
            DType::F32,
            &Device::Cpu,
        );
        assert!(wrong
            .expect_err("shape")
            .to_string()
            .contains("shape mismatch for a"));
        assert!(files.get_unchecked("c", DType::F32, &Device::Cpu).is_err());
    }

    #[test]
    fn truncated_and_foreign_files_are_refused_with_their_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = Tensor::zeros((64, 64), DType::F32, &Device::Cpu).expect("zeros");
        let path = write(dir.path(), "whole.safetensors", &[("t", t)]);
        let bytes = std::fs::read(&path).expect("read");
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 100]).expect("write");
        let err = SafetensorsFiles::open(std::slice::from_ref(&cut))
            .err()
            .expect("truncated");
        assert!(
            err.contains("cut.safetensors") && err.contains("outside the file"),
            "{err}"
        );
        let foreign = dir.path().join("foreign.safetensors");
        std::fs::write(&foreign, b"GGUF\x03\x00\x00\x00 not safetensors").expect("write");
        let opens = |p: PathBuf| SafetensorsFiles::open(&[p]).is_ok();
        assert!(!opens(foreign));
        assert!(!opens(dir.path().join("missing.safetensors")));
    }
}
