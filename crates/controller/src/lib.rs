//! drover-controller
