//! Runs every `sql-tests/slt/**/*.slt` file against its own fresh `eddy` process.
//!
//! `SLT_FILTER=<substring>` runs only matching files.

use std::path::{Path, PathBuf};

use eddy_sql_tests::TestServer;
use eddy_sql_tests::slt::EddyDb;

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "slt") {
            out.push(p);
        }
    }
}

async fn run_file(path: PathBuf) -> Result<(), String> {
    let server = TestServer::start().map_err(|e| format!("{}: {e}", path.display()))?;
    let url = server.url();
    let mut runner = sqllogictest::Runner::new(move || {
        let url = url.clone();
        async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| eddy_sql_tests::slt::DbError::new(e.to_string()))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(EddyDb { client })
        }
    });
    let result = runner.run_file_async(&path).await;
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(format!("{}:\n{e}\n--- server log ---\n{}", path.display(), server.log())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("slt");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    if let Ok(filter) = std::env::var("SLT_FILTER") {
        files.retain(|f| f.to_string_lossy().contains(&filter));
    }
    assert!(!files.is_empty(), "no .slt files found under {}", root.display());
    let mut failures = Vec::new();
    // Two files at a time: each has its own server, and the machine has two cores.
    for chunk in files.chunks(2) {
        let handles: Vec<_> = chunk.iter().cloned().map(|f| tokio::spawn(run_file(f))).collect();
        for h in handles {
            match h.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(e),
                Err(e) => failures.push(format!("test task panicked: {e}")),
            }
        }
    }
    if !failures.is_empty() {
        panic!("{} of {} slt files failed:\n{}", failures.len(), files.len(), failures.join("\n\n"));
    }
}
