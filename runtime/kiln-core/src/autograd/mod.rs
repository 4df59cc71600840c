//! The autograd tape.
//!
//! * Forward ops call [`Tape::record`]: a node is stored only when the tape is recording and an
//!   input needs a gradient, so a frozen base model under a no-grad tape saves nothing.
//! * Each node keeps the tensors its backward needs inside a closure. [`Tape::backward`] takes
//!   the nodes and runs them newest first; each node is dropped (freeing its saved tensors) as
//!   soon as it has run, and a gradient is dropped once its producer consumed it.
//! * Gradients are keyed by [`VarId`]; only leaves created with `requires_grad` (trainable
//!   parameters) keep theirs at the end, so a frozen weight never gets a gradient buffer.
//! * [`Tape::checkpoint`] runs a block without saving activations and recomputes it on a
//!   sub-tape during backward (gradient checkpointing): captured parameters keep their ids, so
//!   their gradients land in the outer result.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Result, Tensor};

/// Identity of a variable on any tape.
pub type VarId = u64;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn fresh_id() -> VarId {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A tensor with an identity and whether gradients flow to it.
#[derive(Clone, Debug)]
pub struct Var {
    id: VarId,
    value: Tensor,
    requires_grad: bool,
}

impl Var {
    /// A leaf: a parameter (`requires_grad`) or an input/frozen weight.
    pub fn leaf(value: Tensor, requires_grad: bool) -> Var {
        Var { id: fresh_id(), value, requires_grad }
    }
    /// A value that never needs a gradient.
    pub fn constant(value: Tensor) -> Var {
        Var::leaf(value, false)
    }
    /// Identity.
    pub fn id(&self) -> VarId {
        self.id
    }
    /// The tensor.
    pub fn value(&self) -> &Tensor {
        &self.value
    }
    /// Whether gradients flow to this variable.
    pub fn requires_grad(&self) -> bool {
        self.requires_grad
    }
    /// Replaces the tensor, keeping the identity (optimizer updates).
    pub fn set_value(&mut self, value: Tensor) {
        self.value = value;
    }
    /// Mutable access to the tensor, keeping the identity.
    pub fn value_mut(&mut self) -> &mut Tensor {
        &mut self.value
    }
}

/// Gradients of one backward pass, keyed by variable id.
pub type GradList = Vec<(VarId, Tensor)>;
/// A block run under [`Tape::checkpoint`].
pub type BlockFn = Rc<dyn Fn(&Tape, &Var) -> Result<Var>>;
type BackwardFn = Box<dyn FnOnce(&Tensor) -> Result<GradList>>;

struct Node {
    out: VarId,
    backward: BackwardFn,
}

/// Records differentiable ops.
pub struct Tape {
    nodes: RefCell<Vec<Node>>,
    recording: bool,
}

impl Default for Tape {
    fn default() -> Self {
        Tape::new()
    }
}

/// The gradients that reached leaves.
#[derive(Default)]
pub struct Grads(HashMap<VarId, Tensor>);

impl Grads {
    /// The gradient of `v`, if any reached it.
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        self.0.get(&v.id)
    }
    /// Takes the gradient of `v` out.
    pub fn remove(&mut self, v: &Var) -> Option<Tensor> {
        self.0.remove(&v.id)
    }
    /// Number of gradients held.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when no gradient reached any leaf.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Adds every gradient of `other` into `self` (gradient accumulation across micro-batches).
    pub fn merge(&mut self, other: Grads) -> Result<()> {
        for (id, g) in other.0 {
            self.add(id, g)?;
        }
        Ok(())
    }
    fn add(&mut self, id: VarId, g: Tensor) -> Result<()> {
        let merged = match self.0.remove(&id) {
            Some(prev) => prev.backend().add(&prev, &g)?,
            None => g,
        };
        self.0.insert(id, merged);
        Ok(())
    }
}

impl Tape {
    /// A recording tape.
    pub fn new() -> Tape {
        Tape { nodes: RefCell::new(Vec::new()), recording: true }
    }
    /// A tape that records nothing (inference, frozen forward passes).
    pub fn no_grad() -> Tape {
        Tape { nodes: RefCell::new(Vec::new()), recording: false }
    }
    /// Whether ops are recorded.
    pub fn is_recording(&self) -> bool {
        self.recording
    }
    /// Nodes currently held (for tests of memory behaviour).
    pub fn len(&self) -> usize {
        self.nodes.borrow().len()
    }
    /// True when no node is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wraps an op's output: records `backward` when recording and some input needs a gradient.
    /// `backward` maps the output gradient to gradients of the inputs that need one.
    pub fn record(
        &self,
        inputs: &[&Var],
        value: Tensor,
        backward: impl FnOnce(&Tensor) -> Result<GradList> + 'static,
    ) -> Var {
        if !self.recording || !inputs.iter().any(|v| v.requires_grad) {
            return Var::constant(value);
        }
        self.push(value, Box::new(backward))
    }

    fn push(&self, value: Tensor, backward: BackwardFn) -> Var {
        let out = Var { id: fresh_id(), value, requires_grad: true };
        self.nodes.borrow_mut().push(Node { out: out.id, backward });
        out
    }

    /// Gradients of scalar `loss` with respect to every leaf that needs one.
    pub fn backward(&self, loss: &Var) -> Result<Grads> {
        let one = loss.value.backend().upload(&Tensor::from_vec(vec![1f32], loss.value.dims().to_vec())?)?;
        self.backward_from(vec![(loss.id, one)])
    }

    /// Backward from given output gradients. Consumes the recorded nodes.
    pub fn backward_from(&self, seeds: GradList) -> Result<Grads> {
        let nodes = std::mem::take(&mut *self.nodes.borrow_mut());
        let mut grads = Grads::default();
        for (id, g) in seeds {
            grads.add(id, g)?;
        }
        for node in nodes.into_iter().rev() {
            let Some(g) = grads.0.remove(&node.out) else { continue };
            for (id, gi) in (node.backward)(&g)? {
                grads.add(id, gi)?;
            }
        }
        Ok(grads)
    }

    /// Runs `f(tape, input)` without keeping its activations; during backward it runs again on
    /// a fresh recording tape and its gradients (for `input` and for any parameter `f`
    /// captures) are passed on. `f` must be deterministic.
    pub fn checkpoint(&self, input: &Var, f: BlockFn) -> Result<Var> {
        if !self.recording {
            return f(self, input);
        }
        let out = f(&Tape::no_grad(), input)?;
        let input = input.clone();
        Ok(self.push(
            out.value,
            Box::new(move |g| {
                let sub = Tape::new();
                let out = f(&sub, &input)?;
                let mut grads = sub.backward_from(vec![(out.id, g.clone())])?;
                grads.0.remove(&out.id);
                Ok(grads.0.into_iter().collect())
            }),
        ))
    }
}
