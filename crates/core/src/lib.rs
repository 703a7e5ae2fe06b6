//! drover-core
