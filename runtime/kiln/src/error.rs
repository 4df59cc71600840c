//! Errors that reach users: each names the file and, where there is one, the tensor or field.

use std::path::PathBuf;

/// Result alias for the kiln crate.
pub type Result<T> = std::result::Result<T, KilnError>;

/// Everything the library reports to a user.
#[derive(Debug, thiserror::Error)]
pub enum KilnError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid safetensors file: {detail}")]
    Safetensors { path: PathBuf, detail: String },
    #[error("{path}: tensor `{tensor}`: {detail}")]
    Tensor { path: PathBuf, tensor: String, detail: String },
    #[error("{path}: missing tensor `{tensor}`")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: field `{field}`: {detail}")]
    Config { path: PathBuf, field: String, detail: String },
    #[error("{path}: unsupported architecture `{arch}`; supported: {supported}")]
    UnknownArch { path: PathBuf, arch: String, supported: String },
    #[error(transparent)]
    Core(#[from] kiln_core::Error),
    /// A bad dataset row: `file:line: field: reason`.
    #[error("{0}")]
    Data(crate::data::RowError),
    #[error("{0}")]
    Msg(String),
}

impl KilnError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        KilnError::Io { path: path.into(), source }
    }
}
