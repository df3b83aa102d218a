//! Where the model runs: `cpu`, `cuda`, `cuda:N` or `metal`, with errors that say which piece
//! is missing (the build's feature, the GPU, the driver) and what to do about it.

use candle_core::Device;

use super::ModelError;

/// Parses and opens a device.
pub fn parse_device(s: &str) -> Result<Device, ModelError> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "metal" if !candle_core::utils::metal_is_available() => Err(not_built(s, "metal")),
        "metal" => Device::new_metal(0).map_err(|e| unavailable(s, &e)),
        _ => match s.strip_prefix("cuda") {
            Some(rest) => {
                let ordinal = match rest {
                    "" => 0,
                    n => n
                        .strip_prefix(':')
                        .and_then(|n| n.parse().ok())
                        .ok_or_else(|| {
                            ModelError::Unsupported(format!(
                                "device {s:?}: write cuda or cuda:N with N the GPU's number"
                            ))
                        })?,
                };
                if !candle_core::utils::cuda_is_available() {
                    return Err(not_built(s, "cuda"));
                }
                Device::new_cuda(ordinal).map_err(|e| unavailable(s, &e))
            }
            None => Err(ModelError::Unsupported(format!(
                "device {s:?} is not one of cpu, cuda, cuda:N, metal"
            ))),
        },
    }
}

fn not_built(device: &str, feature: &str) -> ModelError {
    ModelError::Unsupported(format!(
        "device {device:?}: this shieldgate was built without GPU support; build it with \
         `cargo build --release --features {feature}` (docs/gpu.md), or use --device cpu"
    ))
}

/// The driver's own words (without candle's backtrace) and what to do about them.
fn unavailable(device: &str, e: &candle_core::Error) -> ModelError {
    let inner = match e {
        candle_core::Error::WithBacktrace { inner, .. } => inner.as_ref(),
        other => other,
    };
    let said = inner.to_string();
    let hint = cuda_hint(&said).unwrap_or("check the device name and the GPU's driver");
    ModelError::Unsupported(format!("device {device:?} is unavailable: {hint} ({said})"))
}

/// What to do about a CUDA driver error, by its code.
fn cuda_hint(said: &str) -> Option<&'static str> {
    const HINTS: [(&str, &str); 5] = [
        (
            "CUDA_ERROR_NO_DEVICE",
            "no GPU is visible: `nvidia-smi` must list one; a container needs the GPU passed in \
             (docker run --gpus all, or a Kubernetes nvidia.com/gpu limit)",
        ),
        (
            "CUDA_ERROR_INVALID_DEVICE",
            "there is no GPU of that number: `nvidia-smi -L` lists them from 0",
        ),
        (
            "CUDA_ERROR_INSUFFICIENT_DRIVER",
            "the NVIDIA driver is older than the CUDA 13.0 this binary was built for: install \
             driver 580 or newer",
        ),
        (
            "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
            "the NVIDIA driver library and the kernel module differ in version: reboot or \
             reinstall the driver",
        ),
        (
            "CUDA_ERROR_OUT_OF_MEMORY",
            "the GPU's memory is full: other processes hold it (`nvidia-smi`)",
        ),
    ];
    HINTS
        .iter()
        .find(|(code, _)| said.contains(code))
        .map(|(_, hint)| *hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_refuses_unknown_devices() {
        assert!(parse_device("cpu").expect("cpu").is_cpu());
        for bad in ["tpu", "cuda:x", "cuda1", "cuda:"] {
            let e = parse_device(bad).expect_err(bad).to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_build_without_cuda_says_how_to_get_it() {
        for name in ["cuda", "cuda:1"] {
            let e = parse_device(name).expect_err(name).to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }

    #[test]
    fn driver_errors_get_a_hint_by_code() {
        let no_device = r#"DriverError(CUDA_ERROR_NO_DEVICE, "no CUDA-capable device")"#;
        assert!(cuda_hint(no_device).is_some_and(|h| h.contains("nvidia-smi")));
        assert!(
            cuda_hint("DriverError(CUDA_ERROR_INSUFFICIENT_DRIVER, \"\")")
                .is_some_and(|h| h.contains("580"))
        );
        assert_eq!(cuda_hint("something else"), None);
    }
}
