//! The built-in actions.

use std::sync::Arc;

use crate::Action;
use crate::schema::TypedAction;

mod basic;
mod file;
mod http;
mod package;
mod service;
mod shell;
mod testing;

/// Every built-in action.
pub(crate) fn builtin() -> Vec<Arc<dyn Action>> {
    vec![
        Arc::new(TypedAction(basic::Echo)),
        Arc::new(TypedAction(basic::Sleep)),
        Arc::new(TypedAction(shell::Shell)),
        Arc::new(TypedAction(file::Write)),
        Arc::new(TypedAction(file::Delete)),
        Arc::new(TypedAction(package::Install)),
        Arc::new(TypedAction(package::Upgrade)),
        Arc::new(TypedAction(package::Remove)),
        Arc::new(TypedAction(service::Service::<service::Start>::default())),
        Arc::new(TypedAction(service::Service::<service::Stop>::default())),
        Arc::new(TypedAction(service::Service::<service::Restart>::default())),
        Arc::new(TypedAction(service::Service::<service::Enable>::default())),
        Arc::new(TypedAction(service::Service::<service::Disable>::default())),
        Arc::new(TypedAction(service::Status)),
        Arc::new(TypedAction(http::Check)),
        Arc::new(TypedAction(testing::Succeed)),
        Arc::new(TypedAction(testing::Fail)),
        Arc::new(TypedAction(testing::Sleep)),
        Arc::new(TypedAction(testing::Flaky)),
        Arc::new(TypedAction(testing::Output)),
    ]
}
