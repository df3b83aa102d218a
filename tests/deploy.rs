//! The deployment files cannot rot: every shieldgate container's command line in
//! `deploy/k8s/*.yaml` and the Dockerfile parses with the CLI, every embedded config loads
//! with the config loader (profiles included), a `--config` path is a mounted ConfigMap key,
//! probes hit the admin port the config opens, and docs/deploy.md covers every manifest.

use std::collections::BTreeMap;
use std::path::Path;

use clap::Parser;
use shieldgate::cli::Cli;
use shieldgate::config::Config;
use shieldgate::policy::profiles::Profiles;
use yaml_rust2::{Yaml, YamlLoader};

use crate::common;

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Parses a shieldgate command line as the container runs it (Kubernetes expands
/// `$(JOB_COMPLETION_INDEX)` first).
fn parse_args(args: &[String], origin: &str) -> Cli {
    let expanded = args
        .iter()
        .map(|a| a.replace("$(JOB_COMPLETION_INDEX)", "0"));
    Cli::try_parse_from(std::iter::once("shieldgate".to_string()).chain(expanded))
        .unwrap_or_else(|e| panic!("{origin}: {args:?} does not parse: {e}"))
}

fn load_config(text: &str, origin: &str) -> Config {
    let config = Config::parse(text, origin).unwrap_or_else(|e| panic!("{e}"));
    Profiles::build(&config).unwrap_or_else(|e| panic!("{origin}: {e}"));
    config
}

fn port_of(address: &str) -> i64 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {address:?}"))
}

#[test]
fn every_manifest_runs_commands_and_configs_that_shieldgate_accepts() {
    let dir = common::root().join("deploy/k8s");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("deploy/k8s")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        5,
        "sidecar, gateway, GPU gateway, audit job, vLLM pool"
    );
    let docs_page = std::fs::read_to_string(common::root().join("docs/deploy.md")).expect("docs");
    let mut containers_seen = 0;
    for file in &files {
        let name = file.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(docs_page.contains(name), "docs/deploy.md explains {name}");
        let text = std::fs::read_to_string(file).expect("manifest");
        let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        // ConfigMap name → key → config.
        let mut maps: BTreeMap<String, BTreeMap<String, Config>> = BTreeMap::new();
        for doc in docs
            .iter()
            .filter(|d| d["kind"].as_str() == Some("ConfigMap"))
        {
            let map_name = doc["metadata"]["name"].as_str().expect("name").to_string();
            for (key, value) in doc["data"].as_hash().expect("data") {
                let key = key.as_str().expect("key");
                if key.ends_with(".toml") {
                    let origin = format!("{name}: ConfigMap {map_name} {key}");
                    let config = load_config(value.as_str().expect("text"), &origin);
                    maps.entry(map_name.clone())
                        .or_default()
                        .insert(key.to_string(), config);
                }
            }
        }
        for doc in &docs {
            let spec = &doc["spec"]["template"]["spec"];
            let volumes = spec["volumes"].as_vec().cloned().unwrap_or_default();
            for c in spec["containers"].as_vec().into_iter().flatten() {
                if !c["image"]
                    .as_str()
                    .is_some_and(|i| i.contains("/shieldgate:"))
                {
                    continue;
                }
                containers_seen += 1;
                let origin = format!("{name}: container {}", c["name"].as_str().unwrap_or("?"));
                let args = strings(&c["args"]);
                parse_args(&args, &origin);
                let Some(at) = args.iter().position(|a| a == "--config") else {
                    continue;
                };
                // The config file is a key of a ConfigMap mounted at its folder.
                let path = Path::new(&args[at + 1]);
                let folder = path.parent().and_then(Path::to_str).expect("folder");
                let key = path.file_name().and_then(|n| n.to_str()).expect("key");
                let mount = c["volumeMounts"]
                    .as_vec()
                    .into_iter()
                    .flatten()
                    .find(|m| m["mountPath"].as_str() == Some(folder))
                    .unwrap_or_else(|| panic!("{origin}: nothing mounted at {folder}"));
                let volume = volumes
                    .iter()
                    .find(|v| v["name"] == mount["name"])
                    .unwrap_or_else(|| panic!("{origin}: no volume {:?}", mount["name"]));
                let map = volume["configMap"]["name"]
                    .as_str()
                    .expect("a ConfigMap volume");
                let config = maps
                    .get(map)
                    .and_then(|m| m.get(key))
                    .unwrap_or_else(|| panic!("{origin}: ConfigMap {map} has no {key}"));
                // A replica on a GPU asks for one, runs the CUDA image, and the reverse.
                let gpu_limit = c["resources"]["limits"]["nvidia.com/gpu"].as_i64();
                let on_gpu = config.model.device.starts_with("cuda");
                assert_eq!(
                    gpu_limit.is_some(),
                    on_gpu,
                    "{origin}: nvidia.com/gpu limit"
                );
                assert_eq!(
                    c["image"].as_str().is_some_and(|i| i.ends_with("-cuda")),
                    on_gpu,
                    "{origin}: the CUDA image for a GPU"
                );
                // Probes go to the admin port that the config opens.
                let admin = port_of(&config.server.admin_listen);
                let ports = c["ports"].as_vec().cloned().unwrap_or_default();
                for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                    let get = &c[probe]["httpGet"];
                    if get.is_badvalue() {
                        continue;
                    }
                    let port = match &get["port"] {
                        Yaml::Integer(p) => *p,
                        Yaml::String(named) => ports
                            .iter()
                            .find(|p| p["name"].as_str() == Some(named))
                            .and_then(|p| p["containerPort"].as_i64())
                            .unwrap_or_else(|| panic!("{origin}: no port named {named}")),
                        other => panic!("{origin}: probe port {other:?}"),
                    };
                    assert_eq!(port, admin, "{origin}: {probe} on the admin port");
                    let want = if probe == "readinessProbe" {
                        "/readyz"
                    } else {
                        "/healthz"
                    };
                    assert_eq!(get["path"].as_str(), Some(want), "{origin}: {probe}");
                }
            }
        }
    }
    assert_eq!(
        containers_seen, 6,
        "sidecar, gateway, GPU gateway, audit, merge, remote gateway"
    );
}

#[test]
fn the_images_run_a_command_and_config_that_shieldgate_accepts() {
    for (file, binary, config_file) in [
        (
            "deploy/Dockerfile",
            "/src/target/release/shieldgate",
            "deploy/container.toml",
        ),
        (
            "deploy/Dockerfile.cuda",
            "/src/target/cuda/release/shieldgate",
            "deploy/container-gpu.toml",
        ),
    ] {
        let dockerfile = std::fs::read_to_string(common::root().join(file)).expect("Dockerfile");
        let json_array = |instruction: &str| -> Vec<String> {
            let line = dockerfile
                .lines()
                .find_map(|l| l.strip_prefix(instruction))
                .unwrap_or_else(|| panic!("{file}: no {instruction}"));
            serde_json::from_str(line.trim()).expect("exec form")
        };
        let entry = json_array("ENTRYPOINT ");
        assert_eq!(entry, ["/usr/local/bin/shieldgate"]);
        assert!(
            dockerfile.contains(&format!(
                "COPY --from=build {binary} /usr/local/bin/shieldgate"
            )),
            "{file}: the binary from {binary}"
        );
        let cmd = json_array("CMD ");
        parse_args(&cmd, file);
        let config_path = &cmd[cmd.iter().position(|a| a == "--config").expect("--config") + 1];
        let copy = format!("COPY {config_file} {config_path}");
        assert!(dockerfile.contains(&copy), "{file} holds {config_path}");
        let text = std::fs::read_to_string(common::root().join(config_file)).expect("config");
        let config = load_config(&text, config_file);
        assert!(
            config.server.listen.starts_with("0.0.0.0:"),
            "{config_file}: reachable from outside the container"
        );
        for port in [
            port_of(&config.server.listen),
            port_of(&config.server.admin_listen),
        ] {
            assert!(
                dockerfile.contains(&format!("{port}")),
                "{file}: EXPOSE {port}"
            );
        }
        let cuda = file.ends_with(".cuda");
        assert_eq!(
            config.model.device.starts_with("cuda"),
            cuda,
            "{config_file}"
        );
        assert_eq!(
            dockerfile.contains("scripts/cuda-build.sh"),
            cuda,
            "{file}: the CUDA image builds the cuda feature the way CI does"
        );
    }
}
