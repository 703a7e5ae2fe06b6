//! drover-actions
