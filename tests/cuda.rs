//! The CUDA build (scripts/cuda-build.sh) on a machine without a GPU, with the CUDA 13.0
//! libraries of scripts/cuda-env.sh and its driver stub, which answers like a driver that sees
//! no GPU: scoring on the CPU gives the CPU build's numbers, and `--device cuda` fails at once
//! with an error that says what is missing. Run by scripts/test.sh, which builds the binary.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::common;

/// The CUDA build and the library path that stands for a driver without a GPU.
fn cuda_build() -> (PathBuf, String) {
    let binary = std::env::var_os("SHIELDGATE_CUDA_BIN")
        .map(PathBuf::from)
        .expect("SHIELDGATE_CUDA_BIN names the CUDA build (scripts/cuda-build.sh prints it)");
    let env = Command::new("bash")
        .arg("-c")
        .arg("eval \"$(scripts/cuda-env.sh)\" && echo \"$CUDA_ROOT\"")
        .current_dir(common::root())
        .output()
        .expect("scripts/cuda-env.sh runs");
    assert!(
        env.status.success(),
        "{}",
        String::from_utf8_lossy(&env.stderr)
    );
    let root = String::from_utf8_lossy(&env.stdout).trim().to_string();
    (binary, format!("{root}/lib/stubs:{root}/lib"))
}

fn score(binary: &std::path::Path, libraries: Option<&str>, device: &str) -> Output {
    let mut command = Command::new(binary);
    if let Some(path) = libraries {
        command.env("LD_LIBRARY_PATH", path);
    }
    command
        .args(["score", "--model", "synthetic:tiny", "--tokenizer"])
        .arg(common::tokenizer_path())
        .args(["--device", device, "How do I bake bread?"])
        .output()
        .expect("shieldgate runs")
}

#[test]
#[ignore = "needs the CUDA build: SHIELDGATE_CUDA_BIN=$(scripts/cuda-build.sh) (scripts/test.sh)"]
fn the_cuda_build_scores_on_the_cpu_and_says_what_is_missing_without_a_gpu() {
    let (binary, libraries) = cuda_build();
    let cpu = score(
        std::path::Path::new(env!("CARGO_BIN_EXE_shieldgate")),
        None,
        "cpu",
    );
    let cuda_on_cpu = score(&binary, Some(&libraries), "cpu");
    assert!(
        cuda_on_cpu.status.code().is_some_and(|c| c <= 1),
        "{}",
        String::from_utf8_lossy(&cuda_on_cpu.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&cuda_on_cpu.stdout),
        String::from_utf8_lossy(&cpu.stdout),
        "the CUDA build scores on the CPU as the CPU build does"
    );
    for device in ["cuda", "cuda:1"] {
        let out = score(&binary, Some(&libraries), device);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(out.stdout.is_empty());
        assert!(
            stderr.contains("no GPU is visible") && stderr.contains("nvidia-smi"),
            "{stderr}"
        );
        assert!(stderr.lines().count() <= 2, "no backtrace: {stderr}");
    }
}
