//! `crdgen`: writes Ferrite's CustomResourceDefinitions as one multi-document YAML stream.
//!
//! ```sh
//! cargo run -p ferrite-operator --bin crdgen > manifests/crds.yaml
//! cargo run -p ferrite-operator --bin crdgen -- manifests/crds.yaml
//! ```

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") || args.len() > 1 {
        eprintln!("usage: crdgen [OUTPUT]   (writes to standard output without OUTPUT)");
        return if args.len() > 1 {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let yaml = match ferrite_operator::crd::generate::crds_yaml() {
        Ok(yaml) => yaml,
        Err(e) => {
            eprintln!("crdgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let written = match args.first() {
        Some(path) => std::fs::write(path, &yaml).map_err(|e| format!("writing {path}: {e}")),
        None => std::io::stdout()
            .lock()
            .write_all(yaml.as_bytes())
            .map_err(|e| format!("writing standard output: {e}")),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crdgen: {e}");
            ExitCode::FAILURE
        }
    }
}
