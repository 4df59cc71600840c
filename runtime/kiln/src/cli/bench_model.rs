//! `kiln bench kernels --model CARD`: the roofline model's time for a bench row, beside the
//! measured one. The source: the committed baseline (bench/prof/h100.jsonl, model v1) where it
//! holds the row's case at the row's shape on that card, else the row's op profiled now on the
//! CUDA emulation at its shape (minutes at GPU shapes, seconds at the emulation's).

/// The model's answer for one row.
pub struct Modeled {
    pub seconds: f64,
    pub source: String,
}

#[cfg(feature = "cuda-emu")]
fn profile_now(card: &kiln_cuda::prof::model::Card, op: &str, shape: &str, dtype: &str, variant: &str) -> Option<f64> {
    use kiln_cuda::prof::{dynamic::ProfileOpts, model, ops};
    let dims = ops::parse_shape(shape, ops::arity(op).ok()?, op).ok()?;
    let dtype = super::prof_run::parse_dtype(dtype).ok()?;
    let base = kiln_cuda::backend::emu();
    let be = if op == "gemm" { base.with_gemm(variant.parse().ok()?) } else { base };
    be.exec.set_profile(Some(ProfileOpts { max_ctas: 2 * card.sms as u64, wave: card.sms as u64 }));
    let ran = ops::run(be, op, &dims, dtype, kiln_core::DType::F32);
    let s = be.exec.take_profile();
    be.exec.set_profile(None);
    ran.ok()?;
    let mut names: Vec<String> = s.launches.iter().map(|l| l.kernel.clone()).collect();
    names.dedup();
    let statics = statics(&names, card.arch);
    Some(s.launches.iter().map(|l| model::predict(card, l, statics.iter().find(|st| st.name == l.kernel)).time_s).sum())
}

/// The static profiles of `names` on `arch`, each file compiled once per process (rows repeat
/// kernels); empty where NVRTC, ptxas or nvdisasm is missing.
#[cfg(feature = "cuda-emu")]
fn statics(names: &[String], arch: &str) -> Vec<kiln_cuda::prof::KernelStatic> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    /// (arch, kernel) → its static profile, `None` where it could not be made.
    type Cache = HashMap<(String, String), Option<kiln_cuda::prof::KernelStatic>>;
    static CACHE: Mutex<Option<Cache>> = Mutex::new(None);
    let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = guard.get_or_insert_with(HashMap::new);
    let missing: Vec<String> =
        names.iter().filter(|n| !cache.contains_key(&(arch.to_string(), (*n).clone()))).cloned().collect();
    if !missing.is_empty() {
        // Every entry point of the files involved, so later rows find theirs here.
        let files: Vec<String> = kiln_cuda::kernels::SOURCES
            .iter()
            .map(|(_, src)| kiln_cuda::kernels::entry_points(src))
            .filter(|e| e.iter().any(|n| missing.contains(n)))
            .flatten()
            .collect();
        #[cfg(feature = "cuda")]
        let got = super::prof::static_of(&files, arch, None).unwrap_or_default();
        #[cfg(not(feature = "cuda"))]
        let got: Vec<kiln_cuda::prof::KernelStatic> = Vec::new();
        for n in files {
            let st = got.iter().find(|s| s.name == n).cloned();
            cache.insert((arch.to_string(), n), st);
        }
    }
    names.iter().filter_map(|n| cache.get(&(arch.to_string(), n.clone())).cloned().flatten()).collect()
}

#[cfg(not(feature = "cuda-emu"))]
fn profile_now(_: &kiln_cuda::prof::model::Card, _: &str, _: &str, _: &str, _: &str) -> Option<f64> {
    None
}

/// The model's time for `r` on `card`, or `None` where the row has no profiler op.
pub fn modeled(card: &kiln_cuda::prof::model::Card, r: &kiln_cuda::bench::Row) -> Option<Modeled> {
    let (case, op, shape, dtype) = kiln_cuda::prof::baseline::case_of(r)?;
    if card.key == "h100"
        && let Some(s) = kiln_cuda::prof::baseline::modeled_s(&case, &shape)
    {
        return Some(Modeled { seconds: s, source: "bench/prof/h100.jsonl (model v1)".into() });
    }
    let variant = r.variant.split('_').next().unwrap_or("v3");
    let s = profile_now(card, op, &shape, &dtype, variant)?;
    Some(Modeled {
        seconds: s,
        source: format!("profiled now on the emulation, model v{}", kiln_cuda::prof::model::MODEL_VERSION),
    })
}
