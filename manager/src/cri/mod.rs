//! The CRI gRPC services.

pub mod image_service;
pub mod runtime_service;
