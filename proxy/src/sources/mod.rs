//! Where the model comes from: outside world → `model::Update`.

pub mod file;
