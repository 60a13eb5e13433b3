//! Where the model comes from: outside world → `model::Update`.

pub mod file;
pub mod k8s;
pub mod lab;
pub mod mesh;
