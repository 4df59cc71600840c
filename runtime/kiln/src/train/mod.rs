//! Training: configuration, data preparation, the loop (accumulation, schedules, evaluation,
//! checkpoints and resume), the optimizer and the run's report (metrics, loss curve).

pub mod checkpoint;
pub mod config;
pub mod events;
pub mod identity;
pub mod job;
pub mod metrics;
pub mod optim;
pub mod optim8;
pub mod plan;
pub mod plot;
pub mod pref;
pub mod prepare;
pub mod schedule;
pub mod trainer;

pub use config::{Method, Objective, Optim, PrefLoss, Scheduler, TrainConfig};
pub use events::{Evaluation, Event, Stepped, Summary};
pub use job::{Outcome, RunOptions, run};
pub use metrics::{DeviceLog, EvalLog, PrefLog, SkipLog, StepLog};
pub use optim::AdamW;
pub use trainer::{Batches, Trainer};
