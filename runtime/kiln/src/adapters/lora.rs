//! LoRA adapters (with rsLoRA scaling) on a model's linear layers, named and initialized the way
//! PEFT does so adapters round-trip: A `[r, in]` Kaiming-uniform, B `[out, r]` zero, scale
//! `alpha / r` (or `alpha / √r` with rsLoRA).

use kiln_core::ops::Lora;
use kiln_core::rng::Rng;
use kiln_core::{Tensor, Var};

use super::BaseDims;
use crate::{KilnError, Result};

/// A linear layer an adapter can attach to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    /// All linear layers of a decoder block, in module order.
    pub const ALL: [Target; 7] = [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    /// PEFT / transformers module name.
    pub fn module(self) -> &'static str {
        match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up => "mlp.up_proj",
            Target::Down => "mlp.down_proj",
        }
    }

    /// Parses `q_proj`, `q`, `all-linear` is handled by the caller.
    pub fn parse(s: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| {
            let short = t.module().rsplit('.').next().unwrap_or("");
            s == short || s == short.trim_end_matches("_proj")
        })
    }

    /// `(in, out)` features of this layer.
    pub fn dims(self, c: impl Into<BaseDims>) -> (usize, usize) {
        let c = c.into();
        let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
        match self {
            Target::Q => (h, c.num_heads * d),
            Target::K | Target::V => (h, c.num_kv_heads * d),
            Target::O => (c.num_heads * d, h),
            Target::Gate | Target::Up => (h, i),
            Target::Down => (i, h),
        }
    }

    /// Parses a module name that may be a fused matrix (`qkv_proj`, `gate_up_proj`: its parts)
    /// or one layer ([`Target::parse`]).
    pub fn parse_group(s: &str) -> Option<Vec<Target>> {
        match super::fused::GROUPS.iter().find(|g| s == g.1 || s == g.1.trim_end_matches("_proj")) {
            Some(g) => Some(g.2.to_vec()),
            None => Target::parse(s).map(|t| vec![t]),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// LoRA hyper-parameters.
#[derive(Clone, Debug)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub rslora: bool,
    pub targets: Vec<Target>,
    /// Dropout on each adapter's input while training (PEFT's `lora_dropout`).
    pub dropout: f64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig { r: 8, alpha: 16.0, rslora: false, targets: Target::ALL.to_vec(), dropout: 0.0 }
    }
}

impl LoraConfig {
    /// The factor applied to `B·A`.
    pub fn scale(&self) -> f64 {
        if self.rslora { self.alpha / (self.r as f64).sqrt() } else { self.alpha / self.r as f64 }
    }
}

/// One adapter per targeted linear layer of every block.
#[derive(Clone, Debug)]
pub struct LoraSet {
    pub config: LoraConfig,
    layers: Vec<[Option<Lora>; 7]>,
    /// On fused matrices ([`super::fused`]): later parts use the first part's A.
    fused: bool,
}

impl LoraSet {
    /// Fresh adapters, PEFT's default initialization, from `seed`.
    pub fn new(model: impl Into<BaseDims>, config: LoraConfig, seed: u64) -> Result<LoraSet> {
        let model = model.into();
        if config.r == 0 {
            return Err(KilnError::Msg("LoRA rank r must be at least 1".into()));
        }
        let mut rng = Rng::new(seed);
        LoraSet::build(model, config, |_, _, (fin, fout), r| {
            // kaiming_uniform_(a=√5) on [r, in] gives U(−1/√in, 1/√in).
            let bound = 1.0 / (fin as f64).sqrt();
            let a: Vec<f32> = (0..r * fin).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect();
            Ok((Tensor::from_vec(a, [r, fin])?, Tensor::zeros([fout, r], kiln_core::DType::F32)))
        })
    }

    /// Adapters on `config.targets` of every block, with `a`/`b` from `make(layer, target,
    /// (in, out), r)`, as trainable leaves scaled by the config's scale.
    fn build(
        model: BaseDims,
        config: LoraConfig,
        mut make: impl FnMut(usize, Target, (usize, usize), usize) -> Result<(Tensor, Tensor)>,
    ) -> Result<LoraSet> {
        if model.fused {
            super::fused::check_targets(&config.targets).map_err(KilnError::Msg)?;
        }
        let scale = config.scale();
        let mut layers = Vec::with_capacity(model.num_layers);
        for i in 0..model.num_layers {
            let mut slots: [Option<Lora>; 7] = Default::default();
            for &t in &config.targets {
                let (a, b) = make(i, t, t.dims(model), config.r)?;
                let lora = Lora::new(Var::leaf(a, true), Var::leaf(b, true), scale);
                slots[t.index()] = Some(Lora { dropout: config.dropout, ..lora });
            }
            layers.push(slots);
        }
        let mut set = LoraSet { config, layers, fused: model.fused };
        for i in 0..set.layers.len() {
            set.layers[i] = set.shared(i);
        }
        Ok(set)
    }

    /// Block `layer`'s adapters with each later part of a fused matrix given its first part's
    /// A (the variable trained; the copies are refreshed here, so they never go stale) and
    /// dropout seed (PEFT drops the fused input once).
    fn shared(&self, layer: usize) -> [Option<Lora>; 7] {
        let mut l = self.layers[layer].clone();
        if self.fused {
            for (_, _, parts) in super::fused::GROUPS {
                if let Some(first) = l[parts[0].index()].clone() {
                    for p in &parts[1..] {
                        if let Some(x) = &mut l[p.index()] {
                            x.a = first.a.clone();
                            x.seed = first.seed;
                        }
                    }
                }
            }
        }
        l
    }

    /// Whether `target`'s A is another adapter's (a later part of a fused matrix).
    fn borrows_a(&self, target: Target) -> bool {
        self.fused && super::fused::shares_a(target)
    }

    /// The adapter on `target` of block `layer`.
    pub fn get(&self, layer: usize, target: Target) -> Option<Lora> {
        if layer >= self.layers.len() {
            return None;
        }
        self.shared(layer)[target.index()].clone()
    }

    /// All adapters of block `layer`, indexed by [`Target`] order.
    pub fn layer(&self, layer: usize) -> Option<[Option<Lora>; 7]> {
        (layer < self.layers.len()).then(|| self.shared(layer))
    }

    /// Replaces A and B of one adapter (loading saved adapters, fixtures).
    pub fn set(&mut self, layer: usize, target: Target, a: Tensor, b: Tensor) -> Result<()> {
        let l = self
            .layers
            .get_mut(layer)
            .and_then(|l| l[target.index()].as_mut())
            .ok_or_else(|| KilnError::Msg(format!("no adapter on layer {layer} {}", target.module())))?;
        if a.dims() != l.a.value().dims() || b.dims() != l.b.value().dims() {
            return Err(KilnError::Msg(format!(
                "adapter {}: A {:?} B {:?}, expected {:?} {:?}",
                target.module(),
                a.dims(),
                b.dims(),
                l.a.value().dims(),
                l.b.value().dims()
            )));
        }
        l.a.set_value(a.to_dtype(kiln_core::DType::F32)?);
        l.b.set_value(b.to_dtype(kiln_core::DType::F32)?);
        Ok(())
    }

    /// `(name, var)` for every trainable tensor, named as PEFT saves them. On a fused model the
    /// A of a fused matrix appears once, under the fused module's name, and each part's B under
    /// its own (PEFT's file joins them: [`LoraSet::peft_tensors`]).
    pub fn named_params(&self) -> Vec<(String, &Var)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for t in Target::ALL {
                if let Some(lora) = &l[t.index()] {
                    let m = format!("model.layers.{i}.{}", t.module());
                    if !self.borrows_a(t) {
                        let am = match super::fused::group_of(t).filter(|_| self.fused) {
                            Some(g) => format!("model.layers.{i}.{}", g.0),
                            None => m.clone(),
                        };
                        out.push((format!("{am}.lora_A.weight"), &lora.a));
                    }
                    out.push((format!("{m}.lora_B.weight"), &lora.b));
                }
            }
        }
        out
    }

    /// Every adapter tensor as PEFT's file holds it (without the `base_model.model.` prefix):
    /// on a fused model one A and one B (the parts' B blocks joined in row order) per fused
    /// matrix.
    pub fn peft_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        if !self.fused {
            return Ok(self.named_params().into_iter().map(|(n, v)| (n, v.value().clone())).collect());
        }
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for t in Target::ALL {
                let Some(lora) = &l[t.index()] else { continue };
                match super::fused::group_of(t) {
                    None => {
                        let m = format!("model.layers.{i}.{}", t.module());
                        out.push((format!("{m}.lora_A.weight"), lora.a.value().clone()));
                        out.push((format!("{m}.lora_B.weight"), lora.b.value().clone()));
                    }
                    Some((module, _, parts)) if parts[0] == t => {
                        let m = format!("model.layers.{i}.{module}");
                        let bs: Vec<Tensor> = parts
                            .iter()
                            .filter_map(|p| l[p.index()].as_ref())
                            .map(|x| x.b.value().to_cpu())
                            .collect::<kiln_core::Result<_>>()?;
                        out.push((format!("{m}.lora_A.weight"), lora.a.value().clone()));
                        out.push((format!("{m}.lora_B.weight"), cat_rows(&bs)?));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(out)
    }

    /// Gives every adapter's dropout a fresh mask seed derived from `seed` (the trainer calls
    /// this once per micro-batch, so masks differ across layers, steps and micro-batches but
    /// repeat exactly on resume and in checkpoint recomputation).
    pub fn reseed_dropout(&mut self, seed: u64) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            for (j, slot) in l.iter_mut().enumerate() {
                if let Some(lora) = slot {
                    lora.seed = seed ^ ((i as u64 * 7 + j as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                }
            }
        }
    }

    /// Moves the adapters onto `be`.
    pub fn to_backend(&mut self, be: &'static dyn kiln_core::Backend) -> Result<()> {
        for v in self.params_mut() {
            v.set_value(be.upload(v.value())?);
        }
        Ok(())
    }

    /// Every trainable tensor, mutable.
    pub fn params_mut(&mut self) -> Vec<&mut Var> {
        // The order of `named_params`: a fused matrix's A once, with its first part.
        let fused = self.fused;
        let mut out = Vec::new();
        for l in &mut self.layers {
            for (t, slot) in Target::ALL.iter().zip(l.iter_mut()) {
                if let Some(lora) = slot {
                    if !(fused && super::fused::shares_a(*t)) {
                        out.push(&mut lora.a);
                    }
                    out.push(&mut lora.b);
                }
            }
        }
        out
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.named_params().iter().map(|(_, v)| v.value().numel()).sum()
    }
}

/// On a fused model, `t`'s fused module, the fused matrix's row count and `t`'s first row.
fn fused_rows(model: BaseDims, t: Target) -> Option<(&'static str, usize, usize)> {
    let (module, _, parts) = super::fused::group_of(t).filter(|_| model.fused)?;
    let rows = parts.iter().map(|p| p.dims(model).1).sum();
    let start = parts.iter().take_while(|p| **p != t).map(|p| p.dims(model).1).sum();
    Some((module, rows, start))
}

/// Rows of 2-D f32 tensors one after another.
fn cat_rows(parts: &[Tensor]) -> Result<Tensor> {
    let cols = parts.first().map_or(0, |t| t.dims()[1]);
    let mut data = Vec::new();
    for t in parts {
        data.extend(t.to_vec_f32()?);
    }
    let rows = data.len() / cols.max(1);
    Ok(Tensor::from_vec(data, [rows, cols])?)
}

/// The PEFT tensor name of a kiln parameter name.
fn peft_name(n: &str) -> String {
    format!("base_model.model.{n}")
}

impl LoraSet {
    /// Writes `dir/adapter_config.json` + `dir/adapter_model.safetensors` in PEFT's layout, so
    /// `PeftModel.from_pretrained(model, dir)` loads it onto the transformers model. `full`
    /// holds fully trained modules (`model.embed_tokens.weight`, `lm_head.weight`), saved as
    /// PEFT's `modules_to_save`.
    pub fn save_peft(&self, dir: &std::path::Path, base: &str, dropout: f64, full: &[(String, Tensor)]) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> =
            self.peft_tensors()?.into_iter().map(|(n, t)| (peft_name(&n), t)).collect();
        tensors.extend(full.iter().map(|(n, t)| (peft_name(n), t.clone())));
        let modules: Vec<&str> =
            full.iter().filter_map(|(n, _)| n.strip_suffix(".weight")?.rsplit('.').next()).collect();
        crate::formats::write_safetensors(&dir.join("adapter_model.safetensors"), &tensors)?;
        let c = &self.config;
        let targets: Vec<&str> = if self.fused {
            super::fused::peft_modules(&c.targets)
        } else {
            c.targets.iter().map(|t| t.module().rsplit('.').next().unwrap_or("")).collect()
        };
        let cfg = serde_json::json!({"peft_type": "LORA", "r": c.r, "lora_alpha": c.alpha, "use_rslora": c.rslora,
            "target_modules": targets, "lora_dropout": dropout, "bias": "none", "task_type": "CAUSAL_LM",
            "fan_in_fan_out": false, "inference_mode": true, "base_model_name_or_path": base,
            "modules_to_save": if modules.is_empty() { serde_json::Value::Null } else { serde_json::json!(modules) }});
        let text = serde_json::to_string_pretty(&cfg).map_err(|e| KilnError::Msg(e.to_string()))?;
        crate::formats::write_atomic(&dir.join("adapter_config.json"), text.as_bytes())
    }

    /// Reads a PEFT LoRA adapter folder (kiln's or PEFT's own) for `model`. Every tensor's
    /// shape is checked against `adapter_config.json` (`r`, `target_modules`) and the model
    /// before anything is allocated: the file's own tensors are what is loaded, so a claimed
    /// rank the file does not hold is an error, never an allocation.
    pub fn load_peft(dir: &std::path::Path, model: impl Into<BaseDims>) -> Result<LoraSet> {
        let model = model.into();
        let cp = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cp).map_err(|e| KilnError::io(&cp, e))?;
        let config = parse_adapter_config(&text, &cp)?;
        let file = dir.join("adapter_model.safetensors");
        let store = crate::formats::WeightStore::from_files(std::slice::from_ref(&file))?;
        check_peft_tensors(&store.shapes(), &file, &cp, &config, model)?;
        LoraSet::build(model, config, |i, t, (fin, fout), r| {
            let f32 = kiln_core::DType::F32;
            if let Some((module, rows, start)) = fused_rows(model, t) {
                // One A and B for the fused matrix: this part's rows of B.
                let m = peft_name(&format!("model.layers.{i}.{module}"));
                let a = store.get_shaped(&format!("{m}.lora_A.weight"), &[r, fin])?.to_dtype(f32)?;
                let b = store.get_shaped(&format!("{m}.lora_B.weight"), &[rows, r])?.narrow0(start, fout)?;
                return Ok((a, b.to_dtype(f32)?));
            }
            let m = peft_name(&format!("model.layers.{i}.{}", t.module()));
            let a = store.get_shaped(&format!("{m}.lora_A.weight"), &[r, fin])?.to_dtype(f32)?;
            let b = store.get_shaped(&format!("{m}.lora_B.weight"), &[fout, r])?.to_dtype(f32)?;
            Ok((a, b))
        })
    }

    /// The fully trained modules of a PEFT adapter folder (`modules_to_save`), under
    /// transformers names (`model.embed_tokens.weight`, `lm_head.weight`).
    pub fn peft_full_modules(dir: &std::path::Path) -> Result<Vec<(String, Tensor)>> {
        let store = crate::formats::WeightStore::from_files(&[dir.join("adapter_model.safetensors")])?;
        let mut out = Vec::new();
        for name in ["model.embed_tokens.weight", "lm_head.weight"] {
            let p = peft_name(name);
            if store.contains(&p) {
                out.push((name.to_string(), store.get(&p)?));
            }
        }
        Ok(out)
    }
}

/// The LoRA settings of a PEFT `adapter_config.json` (`path` names it in errors). The fuzz
/// target `adapter_config` drives this with arbitrary text.
pub fn parse_adapter_config(text: &str, cp: &std::path::Path) -> Result<LoraConfig> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| KilnError::Config {
        path: cp.to_path_buf(),
        field: "(json)".into(),
        detail: e.to_string(),
    })?;
    let field = |f: &str, d: &str| KilnError::Config { path: cp.to_path_buf(), field: f.into(), detail: d.into() };
    if v["peft_type"].as_str().is_some_and(|t| t != "LORA") {
        return Err(field("peft_type", "only LORA adapters are supported"));
    }
    let r = v["r"]
        .as_u64()
        .filter(|&r| r > 0 && r <= 1 << 16)
        .ok_or_else(|| field("r", "missing or not a positive integer up to 65536"))?;
    let alpha = v["lora_alpha"]
        .as_f64()
        .filter(|a| a.is_finite())
        .ok_or_else(|| field("lora_alpha", "missing or not a number"))?;
    let mods: Vec<String> = match &v["target_modules"] {
        serde_json::Value::Array(a) => a
            .iter()
            .map(|m| {
                m.as_str()
                    .map(String::from)
                    .ok_or_else(|| field("target_modules", &format!("{m} is not a module name")))
            })
            .collect::<Result<_>>()?,
        serde_json::Value::String(s) if s == "all-linear" => {
            Target::ALL.iter().map(|t| t.module().rsplit('.').next().unwrap_or("").to_string()).collect()
        }
        _ => return Err(field("target_modules", "expected a list of module names")),
    };
    let mut targets = Vec::new();
    for m in &mods {
        let ts = Target::parse_group(m)
            .ok_or_else(|| field("target_modules", &format!("{m}: not a linear layer kiln adapts")))?;
        targets.extend(ts.into_iter().filter(|t| !targets.contains(t)).collect::<Vec<_>>());
    }
    if targets.is_empty() {
        return Err(field("target_modules", "is empty: the adapter adapts nothing"));
    }
    let rslora = match &v["use_rslora"] {
        serde_json::Value::Null => false,
        x => x.as_bool().ok_or_else(|| field("use_rslora", &format!("must be true or false, got {x}")))?,
    };
    // Loaded adapters are for inference and further training alike; dropout comes from the
    // run's own settings, not the saved file.
    Ok(LoraConfig { r: r as usize, alpha, rslora, targets, dropout: 0.0 })
}

/// Checks a PEFT adapter's tensors against its config and the model, from the safetensors
/// header alone: every targeted module of every layer has `lora_A` `[r, in]` and `lora_B`
/// `[out, r]` in a float type, and no LoRA tensor is left over (one for a module or layer the
/// config does not cover would be ignored silently).
pub fn check_peft_tensors(
    tensors: &[(String, Vec<usize>)],
    file: &std::path::Path,
    cp: &std::path::Path,
    config: &LoraConfig,
    model: impl Into<BaseDims>,
) -> Result<()> {
    let model = model.into();
    let r = config.r;
    let shapes: std::collections::HashMap<&str, &[usize]> =
        tensors.iter().map(|(n, s)| (n.as_str(), s.as_slice())).collect();
    let mut expected = std::collections::HashSet::new();
    if model.fused {
        super::fused::check_targets(&config.targets).map_err(|e| KilnError::Config {
            path: cp.to_path_buf(),
            field: "target_modules".into(),
            detail: e,
        })?;
    }
    for i in 0..model.num_layers {
        for &t in &config.targets {
            let (fin, mut fout) = t.dims(model);
            let mut m = peft_name(&format!("model.layers.{i}.{}", t.module()));
            if let Some((module, rows, _)) = fused_rows(model, t) {
                // Checked once per fused matrix, whole.
                if super::fused::shares_a(t) {
                    continue;
                }
                m = peft_name(&format!("model.layers.{i}.{module}"));
                fout = rows;
            }
            for (which, shape) in [("A", [r, fin]), ("B", [fout, r])] {
                let name = format!("{m}.lora_{which}.weight");
                let got = *shapes
                    .get(name.as_str())
                    .ok_or_else(|| KilnError::MissingTensor { path: file.to_path_buf(), tensor: name.clone() })?;
                if got != shape {
                    return Err(KilnError::Tensor {
                        path: file.to_path_buf(),
                        tensor: name,
                        detail: format!(
                            "shape {got:?}, expected {shape:?} (r = {r} from {}, {} from the model)",
                            cp.display(),
                            if which == "A" { format!("{fin} inputs") } else { format!("{fout} outputs") }
                        ),
                    });
                }
                expected.insert(name);
            }
        }
    }
    let mut names: Vec<&String> = tensors.iter().map(|(n, _)| n).collect();
    names.sort();
    if let Some(extra) = names.into_iter().find(|n| n.contains(".lora_") && !expected.contains(*n)) {
        return Err(KilnError::Tensor {
            path: file.to_path_buf(),
            tensor: extra.clone(),
            detail: format!(
                "is not an adapter of a module {} lists for this {}-layer model",
                cp.display(),
                model.num_layers
            ),
        });
    }
    Ok(())
}
