//! `Faulty`: the CPU backend with one deliberate bug switched on, for showing that the parity
//! table catches it. Every method delegates to [`CpuBackend`] (a macro writes the delegation),
//! except where the chosen [`Fault`] changes the arithmetic or the answer of `supports`. Each
//! call is recorded by name, so a test knows which cases reached the broken method and can
//! require exactly those to fail.

use std::sync::Mutex;

use kiln_core::backend::{
    Adam8State, AdamWItem, AdamWStep, AttentionOps, AttnArgs, AttnGrads, CeOut, ElementwiseOps, EmbeddingOps, GluOps,
    LinearGrads, LinearNeeds, LoraRef, LossOps, MatmulOps, MemoryOps, NormOps, Op, OptimOps, RopeOps,
};
use kiln_core::{Backend, CpuBackend, DType, Result, Shape, Support, Tensor};

/// The bug a [`Faulty`] backend carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// None: the wrapper must then pass exactly as the CPU backend does.
    None,
    /// AdamW (`adamw_step`, `adamw_multi`, `adamw8_step`) forgets the decoupled weight decay:
    /// the step runs with `weight_decay = 0`.
    AdamWWithoutWeightDecay,
    /// RoPE rotates the last position of each sequence (`t = T−1` of each row of the batch)
    /// by its position + 1, forward and backward alike.
    RopeOffByOneAtEnd,
    /// `supports` says no to this op at every dtype: its cases are skipped, not run.
    SkipOp(Op),
    /// The linear layer on 16-bit weights rounds its activations and output gradients to the
    /// weights' type first (as a kernel feeding 16-bit operands to tensor cores would), while
    /// the backend still says it computes in f32 after widening the weights exactly.
    RoundsToWeightType,
}

/// The CPU backend with `fault`, recording the backend methods each case calls.
pub struct Faulty {
    inner: CpuBackend,
    fault: Fault,
    /// Methods called since the last [`Faulty::take_calls`] (`adamw_step` and friends are
    /// recorded as `adamw_step wd` when the step has a weight decay).
    calls: Mutex<Vec<&'static str>>,
    /// Whether `compute_dtype` answers the inputs' own type (the rule the parity tolerances
    /// once followed: 16-bit-labelled cases got 16-bit tolerances) instead of the CPU's answer.
    claims_input_type: bool,
}

impl Faulty {
    pub fn new(fault: Fault) -> Faulty {
        Faulty { inner: CpuBackend, fault, calls: Mutex::new(Vec::new()), claims_input_type: false }
    }

    /// This backend saying it computes every op in its inputs' type, as the tolerances of a
    /// case once followed its dtype label.
    pub fn claiming_input_type(self) -> Faulty {
        Faulty { claims_input_type: true, ..self }
    }

    pub fn fault(&self) -> Fault {
        self.fault
    }

    pub fn claims_input_type(&self) -> bool {
        self.claims_input_type
    }

    /// The methods called since the last take (the parity table calls `on` after each case,
    /// so taking them there gives each case's calls).
    pub fn take_calls(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn record(&self, what: &'static str) {
        self.calls.lock().unwrap().push(what);
    }

    /// The step's hyper-parameters as the fault runs them.
    fn hp(&self, hp: AdamWStep, what: &'static str, with_wd: &'static str) -> AdamWStep {
        self.record(if hp.weight_decay != 0.0 { with_wd } else { what });
        match self.fault {
            Fault::AdamWWithoutWeightDecay => AdamWStep { weight_decay: 0.0, ..hp },
            _ => hp,
        }
    }

    /// The positions as the fault runs them: the last of each row one further on.
    fn positions(&self, x: &Tensor, pos: &Tensor) -> Result<Tensor> {
        if self.fault != Fault::RopeOffByOneAtEnd {
            return Ok(pos.clone());
        }
        let t = x.dims().get(1).copied().unwrap_or(1).max(1);
        let mut p = pos.as_slice::<i32>()?.to_vec();
        for row in p.chunks_mut(t) {
            if let Some(last) = row.last_mut() {
                *last += 1;
            }
        }
        Tensor::from_vec(p, pos.shape().clone())
    }

    /// `t` as the fault feeds it to a product with `w`: rounded to `w`'s type when that is
    /// 16-bit.
    fn operand(&self, t: &Tensor, w: &Tensor) -> Result<Tensor> {
        match w.dtype() {
            DType::BF16 | DType::F16 if self.fault == Fault::RoundsToWeightType => {
                t.to_dtype(w.dtype())?.to_dtype(t.dtype())
            }
            _ => Ok(t.clone()),
        }
    }
}

/// Methods that pass straight to the CPU backend, each recorded by name.
macro_rules! delegate {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(
            fn $name(&self, $($arg: $ty),*) -> $ret {
                self.record(stringify!($name));
                self.inner.$name($($arg),*)
            }
        )*
    };
}

impl MemoryOps for Faulty {
    delegate! {
        to_cpu(t: &Tensor) -> Result<Tensor>;
        upload(t: &Tensor) -> Result<Tensor>;
        cast(t: &Tensor, dtype: DType) -> Result<Tensor>;
        zeros(shape: &Shape, dtype: DType) -> Result<Tensor>;
    }
}

impl ElementwiseOps for Faulty {
    delegate! {
        add(a: &Tensor, b: &Tensor) -> Result<Tensor>;
        scale(a: &Tensor, s: f64) -> Result<Tensor>;
        mul(a: &Tensor, b: &Tensor) -> Result<Tensor>;
        sum_squares(a: &Tensor) -> Result<f64>;
        softcap_fwd(x: &Tensor, cap: f64) -> Result<Tensor>;
        softcap_bwd(x: &Tensor, dy: &Tensor, cap: f64) -> Result<Tensor>;
    }
}

impl GluOps for Faulty {
    delegate! {
        swiglu_fwd(g: &Tensor, u: &Tensor) -> Result<Tensor>;
        swiglu_bwd(g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)>;
        geglu_fwd(g: &Tensor, u: &Tensor) -> Result<Tensor>;
        geglu_bwd(g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)>;
    }
}

impl MatmulOps for Faulty {
    delegate! {
        matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor>;
    }
    fn linear_fwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        lora: Option<LoraRef<'_>>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        self.record("linear_fwd");
        self.inner.linear_fwd(&self.operand(x, w)?, w, bias, lora)
    }
    fn linear_bwd(
        &self,
        dy: &Tensor,
        x: &Tensor,
        w: &Tensor,
        lora: Option<(LoraRef<'_>, &Tensor)>,
        needs: LinearNeeds,
    ) -> Result<LinearGrads> {
        self.record("linear_bwd");
        self.inner.linear_bwd(&self.operand(dy, w)?, &self.operand(x, w)?, w, lora, needs)
    }
}

impl NormOps for Faulty {
    delegate! {
        rms_norm_fwd(x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)>;
        rms_norm_bwd(dy: &Tensor, x: &Tensor, w: &Tensor, rstd: &Tensor) -> Result<(Tensor, Tensor)>;
    }
}

impl RopeOps for Faulty {
    fn rope(&self, x: &Tensor, pos: &Tensor, inv_freq: &Tensor, mscale: f32, inverse: bool) -> Result<Tensor> {
        self.record("rope");
        self.inner.rope(x, &self.positions(x, pos)?, inv_freq, mscale, inverse)
    }
}

impl AttentionOps for Faulty {
    delegate! {
        attention_fwd(args: &AttnArgs<'_>) -> Result<(Tensor, Tensor)>;
        attention_bwd(args: &AttnArgs<'_>, o: &Tensor, lse: &Tensor, d_o: &Tensor) -> Result<AttnGrads>;
    }
}

impl EmbeddingOps for Faulty {
    delegate! {
        embedding_fwd(w: &Tensor, ids: &Tensor) -> Result<Tensor>;
        embedding_bwd(dy: &Tensor, ids: &Tensor, vocab: usize) -> Result<Tensor>;
    }
}

impl LossOps for Faulty {
    delegate! {
        cross_entropy_fwd(logits: &Tensor, targets: &Tensor) -> Result<CeOut>;
        cross_entropy_bwd(logits: &Tensor, targets: &Tensor, lse: &Tensor, dloss: f64, n_valid: usize)
            -> Result<Tensor>;
        cross_entropy_bwd_rows(logits: &Tensor, targets: &Tensor, lse: &Tensor, drow: &Tensor) -> Result<Tensor>;
    }
}

impl OptimOps for Faulty {
    fn adamw_step(&self, it: AdamWItem<'_>, hp: AdamWStep) -> Result<()> {
        let hp = self.hp(hp, "adamw_step", "adamw_step wd");
        self.inner.adamw_step(it, hp)
    }
}

impl Backend for Faulty {
    fn name(&self) -> &'static str {
        "faulty"
    }
    fn supports(&self, op: Op, dtype: DType) -> Support {
        match self.fault {
            Fault::SkipOp(o) if o == op => Support::No(format!("{op} left out on purpose")),
            _ => self.inner.supports(op, dtype),
        }
    }
    fn compute_dtype(&self, op: Op, dtype: DType) -> DType {
        if self.claims_input_type { dtype } else { self.inner.compute_dtype(op, dtype) }
    }
    fn adamw_multi(&self, items: &mut [AdamWItem<'_>], hp: AdamWStep, grad_scale: f64) -> Result<()> {
        let hp = self.hp(hp, "adamw_multi", "adamw_multi wd");
        self.inner.adamw_multi(items, hp, grad_scale)
    }
    fn sum_squares_multi(&self, ts: &[&Tensor]) -> Result<f64> {
        self.record("sum_squares_multi");
        self.inner.sum_squares_multi(ts)
    }
    fn has_adamw8(&self) -> bool {
        self.inner.has_adamw8()
    }
    fn adamw8_step(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        state: &mut Adam8State,
        hp: AdamWStep,
        grad_scale: f64,
    ) -> Result<()> {
        let hp = self.hp(hp, "adamw8_step", "adamw8_step wd");
        self.inner.adamw8_step(param, grad, state, hp, grad_scale)
    }
}
