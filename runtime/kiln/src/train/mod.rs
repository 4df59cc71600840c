//! Training: optimizers now; the trainer loop, schedules and checkpoints with the training issue.

pub mod optim;

pub use optim::AdamW;
