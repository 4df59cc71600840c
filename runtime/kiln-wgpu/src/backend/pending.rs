//! Op families whose WGSL kernels have not landed yet: each method says so (and
//! [`Backend::supports`](kiln_core::Backend::supports) reports the same, so the parity suite
//! skips them with the reason).

use kiln_core::backend::{
    AdamWStep, AttentionOps, AttnArgs, CeOut, EmbeddingOps, LinearGrads, LinearNeeds, LoraRef, LossOps, MatmulOps,
    NormOps, OptimOps, RopeOps,
};
use kiln_core::{Error, Result, Tensor};

use super::WgpuBackend;

fn pending<T>(op: &str) -> Result<T> {
    Err(Error::Msg(format!("wgpu: {op} has no WGSL kernel yet (run it on --backend cpu)")))
}

impl MatmulOps for WgpuBackend {
    fn matmul(&self, _: &Tensor, _: &Tensor, _: bool, _: bool) -> Result<Tensor> {
        pending("matmul")
    }
    fn linear_fwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: Option<&Tensor>,
        _: Option<LoraRef<'_>>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        pending("linear")
    }
    fn linear_bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: Option<(LoraRef<'_>, &Tensor)>,
        _: LinearNeeds,
    ) -> Result<LinearGrads> {
        pending("linear backward")
    }
}

impl NormOps for WgpuBackend {
    fn rms_norm_fwd(&self, _: &Tensor, _: &Tensor, _: f64) -> Result<(Tensor, Tensor)> {
        pending("rms_norm")
    }
    fn rms_norm_bwd(&self, _: &Tensor, _: &Tensor, _: &Tensor, _: &Tensor) -> Result<(Tensor, Tensor)> {
        pending("rms_norm backward")
    }
}

impl RopeOps for WgpuBackend {
    fn rope(&self, _: &Tensor, _: &Tensor, _: &Tensor, _: bool) -> Result<Tensor> {
        pending("rope")
    }
}

impl AttentionOps for WgpuBackend {
    fn attention_fwd(&self, _: &AttnArgs<'_>) -> Result<(Tensor, Tensor)> {
        pending("attention")
    }
    fn attention_bwd(&self, _: &AttnArgs<'_>, _: &Tensor, _: &Tensor, _: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        pending("attention backward")
    }
}

impl EmbeddingOps for WgpuBackend {
    fn embedding_fwd(&self, _: &Tensor, _: &Tensor) -> Result<Tensor> {
        pending("embedding")
    }
    fn embedding_bwd(&self, _: &Tensor, _: &Tensor, _: usize) -> Result<Tensor> {
        pending("embedding backward")
    }
}

impl LossOps for WgpuBackend {
    fn cross_entropy_fwd(&self, _: &Tensor, _: &Tensor) -> Result<CeOut> {
        pending("cross_entropy")
    }
    fn cross_entropy_bwd(&self, _: &Tensor, _: &Tensor, _: &Tensor, _: f64, _: usize) -> Result<Tensor> {
        pending("cross_entropy backward")
    }
    fn cross_entropy_bwd_rows(&self, _: &Tensor, _: &Tensor, _: &Tensor, _: &Tensor) -> Result<Tensor> {
        pending("cross_entropy backward")
    }
}

impl OptimOps for WgpuBackend {
    fn adamw_step(&self, _: &mut Tensor, _: &Tensor, _: &mut Tensor, _: &mut Tensor, _: AdamWStep) -> Result<()> {
        pending("adamw")
    }
}
