//! One module per subcommand.

pub mod actions;
pub mod agent;
pub mod bench;
pub mod controller;
pub mod dev;
pub mod exec;
pub mod jobs;
pub mod nodes;
pub mod plan;
pub mod run;
pub mod schema;
pub mod simulate;
pub mod validate;

/// Run a long-lived role (controller, agent, dev fleet) on a multi-threaded runtime.
pub fn block_on_runtime(f: impl std::future::Future<Output = crate::exit::Exit>) -> crate::exit::Exit {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            crate::exit::Exit::Error
        }
    }
}
