//! Errors of the core: shapes, dtypes, backends. Higher layers wrap these with file/tensor context.

/// Result alias for kiln-core.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong inside tensors, backends and the tape.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("dtype {dtype:?} is not supported by {op} on backend {backend}")]
    Unsupported { op: &'static str, dtype: crate::DType, backend: &'static str },
    #[error("{0}")]
    Msg(String),
    #[error("backend {backend}: {detail}")]
    Backend { backend: &'static str, detail: String },
}

impl Error {
    /// Shape error helper.
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape { op, detail: detail.into() }
    }
}

/// Returns a shape error unless `cond` holds.
#[macro_export]
macro_rules! ensure_shape {
    ($cond:expr, $op:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::Error::shape($op, format!($($arg)+)));
        }
    };
}
