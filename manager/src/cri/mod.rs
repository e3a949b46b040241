//! The CRI gRPC services.

pub mod image_service;
