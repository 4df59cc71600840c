//! The Llama-family decoder: embedding → N × (RMSNorm → GQA attention with RoPE → residual →
//! RMSNorm → SwiGLU MLP → residual) → RMSNorm → LM head, as transformers' `LlamaForCausalLM`
//! (Qwen2 adds q/k/v bias, Qwen3 a per-head RMSNorm on q and k before RoPE; Gemma 2/3 add
//! norms after attention and the MLP, GeGLU, scaled embeddings, sliding-window layers with their
//! own RoPE base, soft-capped scores and logits: see [`super::gemma`]).
//!
//! Base weights are frozen leaves viewing the memory map; adapters bring the trainable leaves.
//! With `checkpoint`, each block runs under [`Tape::checkpoint`] and is recomputed in backward.

use std::path::Path;
use std::rc::Rc;

use kiln_core::ops::{self, CeResult, Lora};
use kiln_core::{DType, Tape, Tensor, Var};

use super::config::ModelConfig;
use super::gguf::WeightSource;
use crate::adapters::{LoraSet, Target};
use crate::formats::WeightStore;
use crate::{KilnError, Result};

/// A linear layer: weight `[out, in]`, optional bias.
#[derive(Clone, Debug)]
pub struct Linear {
    pub w: Var,
    pub b: Option<Var>,
}

/// One decoder block.
#[derive(Clone, Debug)]
pub struct Block {
    pub attn_norm: Var,
    /// q, k, v, o, gate, up, down — indexed by [`Target`].
    pub linears: [Linear; 7],
    pub q_norm: Option<Var>,
    pub k_norm: Option<Var>,
    pub mlp_norm: Var,
    /// Gemma's norms of the attention output and of the MLP output (before each residual add).
    pub post_attn_norm: Option<Var>,
    pub post_mlp_norm: Option<Var>,
    /// The block's index: its attention window is read from the config at each forward
    /// ([`ModelConfig::layer_window`]), so a changed config takes effect.
    pub layer: usize,
    /// Rotate with the local RoPE frequencies (Gemma 3's sliding layers).
    pub local_rope: bool,
    /// Bottleneck adapters after the attention and the MLP sub-layer (the `adapter` method).
    pub bottleneck: Option<[crate::adapters::bottleneck::Bottleneck; 2]>,
}

/// A loaded model.
pub struct Llama {
    pub config: ModelConfig,
    pub embed: Var,
    pub blocks: Vec<Block>,
    pub norm: Var,
    /// `None` when tied to the embedding.
    pub lm_head: Option<Var>,
    inv_freq: Tensor,
    /// LongRoPE's long-context frequencies and the position count above which they apply.
    long_rope: Option<(Tensor, usize)>,
    /// The sliding layers' RoPE frequencies, where they differ (Gemma 3).
    local_inv_freq: Option<Tensor>,
    /// Embeddings are multiplied by this (Gemma: √hidden).
    embed_scale: Option<f64>,
    /// The blocks' activation type when pinned ([`Llama::activation_dtype`]).
    act: Option<DType>,
}

/// One batch of token rows.
pub struct Inputs<'a> {
    /// `[B, T]` token ids (`I32`).
    pub ids: &'a Tensor,
    /// `[B, T]` RoPE positions, restarting per packed row.
    pub pos: &'a Tensor,
    /// `[B, T]` segment ids for packed rows (`None`: one sequence per batch row).
    pub seg: Option<&'a Tensor>,
    /// Segment `4g` is a prefix that segments `4g+1..4g+3` also attend to (preference pairs
    /// sharing their prompt's forward).
    pub shared_prefix: bool,
    /// Run the base model alone: bottleneck adapters off (LoRA is off when none is passed).
    /// The reference model of preference tuning.
    pub base_only: bool,
}

/// Everything a block needs besides its weights, shared by all blocks of a forward.
#[derive(Clone)]
struct Ctx {
    b: usize,
    t: usize,
    pos: Tensor,
    seg: Option<Tensor>,
    shared_prefix: bool,
    base_only: bool,
    inv_freq: Tensor,
    local_inv_freq: Option<Tensor>,
    cfg: ModelConfig,
}

impl Llama {
    /// Loads a model directory (`config.json` + safetensors) or a `.gguf` file. With `trainable`,
    /// base weights become f32 parameters (full fine-tuning); otherwise they stay frozen views.
    pub fn load(path: &Path, trainable: bool) -> Result<Llama> {
        if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
            let (src, config) = super::gguf::GgufWeights::open(path)?;
            return Llama::from_source(config, &src, trainable);
        }
        let config = ModelConfig::load(path)?;
        let store = WeightStore::open(path)?;
        // num_hidden_layers must be the layers the weights hold (checked before anything is
        // built from it); the count of present layers is bounded by the tensors in the store.
        let has_layer = |i: usize| {
            store.contains(&super::gemma::stored_name(&store, &format!("model.layers.{i}.input_layernorm.weight")))
        };
        let n = config.num_layers;
        if !has_layer(n - 1) || has_layer(n) {
            let present = (0..).take_while(|&i| has_layer(i)).count();
            let cfg = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
            return Err(KilnError::Config {
                path: cfg,
                field: "num_hidden_layers".into(),
                detail: format!("is {n}, but the weights in {} hold {present} layers", path.display()),
            });
        }
        if config.is_gemma() {
            super::gemma::note_multimodal(&config, path);
            return Llama::from_source(config, &super::gemma::HfSource { store: &store }, trainable);
        }
        Llama::from_source(config, &store, trainable)
    }

    /// Builds the model from any weight source (safetensors directory, GGUF file).
    pub fn from_source(config: ModelConfig, store: &dyn WeightSource, trainable: bool) -> Result<Llama> {
        // Phi-3's fused q/k/v and gate/up weights are read as row views under Llama names.
        let phi3 = super::phi3::Phi3Source { inner: store, config: config.clone() };
        let store: &dyn WeightSource = if config.arch == super::Arch::Phi3 { &phi3 } else { store };
        let c = &config;
        let leaf = |name: &str, shape: &[usize]| -> Result<Var> {
            let t = store.get_shaped(name, shape)?;
            Ok(if trainable { Var::leaf(t.to_dtype(DType::F32)?.to_cpu()?, true) } else { Var::constant(t) })
        };
        let h = c.hidden_size;
        let embed = leaf("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let mut blocks = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let lin = |t: Target| -> Result<Linear> {
                let (fin, fout) = t.dims(c);
                let name = format!("{p}.{}", t.module());
                let has_bias = match t {
                    Target::Q | Target::K | Target::V => c.qkv_bias,
                    Target::O => c.o_bias,
                    _ => c.mlp_bias,
                };
                let b = if has_bias { Some(leaf(&format!("{name}.bias"), &[fout])?) } else { None };
                Ok(Linear { w: leaf(&format!("{name}.weight"), &[fout, fin])?, b })
            };
            let qk_norm = matches!(c.arch, super::Arch::Qwen3 | super::Arch::Gemma3);
            // Gemma: post_attention_layernorm follows attention; the MLP's input norm is
            // pre_feedforward_layernorm.
            let gemma = c.is_gemma();
            let opt = |on: bool, n: &str| -> Result<Option<Var>> {
                if on { Ok(Some(leaf(&format!("{p}.{n}.weight"), &[h])?)) } else { Ok(None) }
            };
            blocks.push(Block {
                attn_norm: leaf(&format!("{p}.input_layernorm.weight"), &[h])?,
                linears: [
                    lin(Target::Q)?,
                    lin(Target::K)?,
                    lin(Target::V)?,
                    lin(Target::O)?,
                    lin(Target::Gate)?,
                    lin(Target::Up)?,
                    lin(Target::Down)?,
                ],
                q_norm: if qk_norm {
                    Some(leaf(&format!("{p}.self_attn.q_norm.weight"), &[c.head_dim])?)
                } else {
                    None
                },
                k_norm: if qk_norm {
                    Some(leaf(&format!("{p}.self_attn.k_norm.weight"), &[c.head_dim])?)
                } else {
                    None
                },
                mlp_norm: leaf(&format!("{p}.{}.weight", mlp_norm_name(c)), &[h])?,
                post_attn_norm: opt(gemma, "post_attention_layernorm")?,
                post_mlp_norm: opt(gemma, "post_feedforward_layernorm")?,
                layer: i,
                local_rope: c.local_rope(i),
                bottleneck: None,
            });
        }
        let norm = leaf("model.norm.weight", &[h])?;
        let lm_head = if c.tie_word_embeddings { None } else { Some(leaf("lm_head.weight", &[c.vocab_size, h])?) };
        let inv_freq = c.inv_freq()?;
        let long_rope = super::phi3::long_inv_freq(c)?;
        let local_inv_freq = super::gemma::local_inv_freq(c)?;
        let embed_scale =
            super::gemma::embed_scale(c, store.get_shaped("model.embed_tokens.weight", &[c.vocab_size, h])?.dtype());
        Ok(Llama { config, embed, blocks, norm, lm_head, inv_freq, long_rope, local_inv_freq, embed_scale, act: None })
    }

    /// Every base weight (for memory checks and full fine-tuning).
    pub fn named_weights(&self) -> Vec<(String, &Var)> {
        let mut v = vec![("model.embed_tokens.weight".to_string(), &self.embed)];
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("model.layers.{i}");
            v.push((format!("{p}.input_layernorm.weight"), &b.attn_norm));
            v.push((format!("{p}.{}.weight", mlp_norm_name(&self.config)), &b.mlp_norm));
            if let (Some(a), Some(m)) = (&b.post_attn_norm, &b.post_mlp_norm) {
                v.push((format!("{p}.post_attention_layernorm.weight"), a));
                v.push((format!("{p}.post_feedforward_layernorm.weight"), m));
            }
            for (t, l) in Target::ALL.iter().zip(&b.linears) {
                v.push((format!("{p}.{}.weight", t.module()), &l.w));
                if let Some(bias) = &l.b {
                    v.push((format!("{p}.{}.bias", t.module()), bias));
                }
            }
            if let (Some(q), Some(k)) = (&b.q_norm, &b.k_norm) {
                v.push((format!("{p}.self_attn.q_norm.weight"), q));
                v.push((format!("{p}.self_attn.k_norm.weight"), k));
            }
        }
        v.push(("model.norm.weight".into(), &self.norm));
        if let Some(h) = &self.lm_head {
            v.push(("lm_head.weight".into(), h));
        }
        v
    }

    /// Moves every weight (and the adapters attached so far) onto `be`. Frozen f16/bf16 weights
    /// stay in their type where the backend keeps it, and are widened where it does not.
    pub fn to_backend(&mut self, be: &'static dyn kiln_core::Backend) -> Result<()> {
        for v in self.weights_mut() {
            v.set_value(be.upload(v.value())?);
        }
        for (_, v) in self.bottleneck_params_mut() {
            v.set_value(be.upload(v.value())?);
        }
        self.inv_freq = be.upload(&self.inv_freq)?;
        if let Some((f, _)) = &mut self.long_rope {
            *f = be.upload(f)?;
        }
        if let Some(f) = &self.local_inv_freq {
            self.local_inv_freq = Some(be.upload(f)?);
        }
        Ok(())
    }

    /// The backend the weights live on.
    pub fn backend(&self) -> &'static dyn kiln_core::Backend {
        self.embed.value().backend()
    }

    /// Every base weight, mutable, in [`Llama::named_weights`] order (full fine-tuning).
    pub fn weights_mut(&mut self) -> Vec<&mut Var> {
        let mut v = vec![&mut self.embed];
        for b in &mut self.blocks {
            v.push(&mut b.attn_norm);
            v.push(&mut b.mlp_norm);
            if let (Some(a), Some(m)) = (&mut b.post_attn_norm, &mut b.post_mlp_norm) {
                v.push(a);
                v.push(m);
            }
            for l in &mut b.linears {
                v.push(&mut l.w);
                v.extend(l.b.as_mut());
            }
            if let (Some(q), Some(k)) = (&mut b.q_norm, &mut b.k_norm) {
                v.push(q);
                v.push(k);
            }
        }
        v.push(&mut self.norm);
        v.extend(self.lm_head.as_mut());
        v
    }

    /// Grows the vocabulary to `vocab` rows: the embedding (and an untied LM head) become f32
    /// with the new rows set to the mean of the existing ones (transformers'
    /// `resize_token_embeddings` starts from the same mean), and the config follows.
    pub fn resize_vocab(&mut self, vocab: usize) -> Result<()> {
        let old = self.config.vocab_size;
        if vocab <= old {
            return Ok(());
        }
        let h = self.config.hidden_size;
        let grow = |v: &Var| -> Result<Var> {
            let mut x = v.value().to_vec_f32()?;
            let mut mean = vec![0f32; h];
            for row in x.chunks(h) {
                mean.iter_mut().zip(row).for_each(|(m, r)| *m += r / old as f32);
            }
            for _ in old..vocab {
                x.extend_from_slice(&mean);
            }
            Ok(Var::leaf(Tensor::from_vec(x, [vocab, h])?, v.requires_grad()))
        };
        self.embed = grow(&self.embed)?;
        if let Some(head) = &self.lm_head {
            self.lm_head = Some(grow(head)?);
        }
        self.config.vocab_size = vocab;
        Ok(())
    }

    /// Adds fresh bottleneck adapters of hidden size `size` to every block.
    pub fn add_bottlenecks(&mut self, size: usize, seed: u64) -> Result<()> {
        let set = crate::adapters::bottleneck::new_set(&self.config, size, seed)?;
        for (b, s) in self.blocks.iter_mut().zip(set) {
            b.bottleneck = Some(s);
        }
        Ok(())
    }

    /// The bottleneck adapters' tensors, mutable, with their saved names.
    pub fn bottleneck_params_mut(&mut self) -> Vec<(String, &mut Var)> {
        let mut v = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            for (site, bn) in crate::adapters::bottleneck::SITES.iter().zip(b.bottleneck.iter_mut().flatten()) {
                let names: Vec<&str> = bn.named().iter().map(|(n, _)| *n).collect();
                for (n, var) in names.into_iter().zip(bn.vars_mut()) {
                    v.push((format!("model.layers.{i}.{site}.{n}"), var));
                }
            }
        }
        v
    }

    /// Loads a bottleneck adapter folder written by kiln onto this model.
    pub fn load_bottlenecks(&mut self, dir: &Path, size: usize) -> Result<()> {
        let store = WeightStore::from_files(&[dir.join("adapter_model.safetensors")])?;
        // adapter_config.json's size is checked against the file before any adapter exists:
        // a claimed size the file does not hold must not allocate.
        let h = self.config.hidden_size;
        for i in 0..self.config.num_layers {
            for site in crate::adapters::bottleneck::SITES {
                let p = format!("model.layers.{i}.{site}");
                store.get_shaped(&format!("{p}.down.weight"), &[size, h]).map_err(|e| adapter_err(dir, e))?;
                store.get_shaped(&format!("{p}.up.weight"), &[h, size]).map_err(|e| adapter_err(dir, e))?;
            }
        }
        let extra = store.names().into_iter().find(|n| {
            n.strip_prefix("model.layers.")
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<usize>().ok())
                .is_none_or(|i| i >= self.config.num_layers)
        });
        if let Some(n) = extra {
            return Err(KilnError::Tensor {
                path: dir.join("adapter_model.safetensors"),
                tensor: n,
                detail: format!("is not a bottleneck adapter of this {}-layer model", self.config.num_layers),
            });
        }
        self.add_bottlenecks(size, 0)?;
        for (name, v) in self.bottleneck_params_mut() {
            let t = store.get_shaped(&name, v.value().dims())?;
            v.set_value(t.to_dtype(DType::F32)?);
        }
        Ok(())
    }

    /// Quantizes the frozen linear weights of every block to `ty` (QLoRA on a model stored in
    /// f32/f16/bf16); embeddings, norms and the LM head keep their type. Returns the bytes the
    /// linear weights take afterwards.
    pub fn quantize_linears(&mut self, ty: kiln_core::quant::GgmlType) -> Result<usize> {
        let mut bytes = 0;
        for (i, b) in self.blocks.iter_mut().enumerate() {
            for (t, l) in Target::ALL.iter().zip(&mut b.linears) {
                let w = l.w.value();
                let (bs, k) = (ty.block().0, w.shape().last());
                if !k.is_multiple_of(bs) {
                    return Err(KilnError::Msg(format!(
                        "quantizing model.layers.{i}.{}.weight to {}: its rows of {k} values are not whole {bs}-value blocks",
                        t.module(),
                        ty.name()
                    )));
                }
                let q = if w.dtype() == DType::Quant(ty) {
                    w.clone()
                } else {
                    w.to_dtype(DType::Quant(ty)).map_err(|e| {
                        KilnError::Msg(format!(
                            "quantizing model.layers.{i}.{}.weight to {}: {e}",
                            t.module(),
                            ty.name()
                        ))
                    })?
                };
                bytes += q.dtype().bytes(q.numel());
                l.w = Var::constant(q);
            }
        }
        Ok(bytes)
    }

    /// Final hidden states `[B·T, H]` (after the last RMSNorm).
    pub fn hidden(&self, tape: &Tape, inp: &Inputs<'_>, lora: Option<&LoraSet>, checkpoint: bool) -> Result<Var> {
        let c = &self.config;
        let d = inp.ids.dims();
        if d.len() != 2 || inp.pos.dims() != d || inp.seg.is_some_and(|s| s.dims() != d) {
            return Err(KilnError::Msg(format!(
                "model inputs: ids {:?}, pos {:?} must both be [B, T]",
                d,
                inp.pos.dims()
            )));
        }
        if let Some(w) = c.sliding_window.filter(|&w| d[1] > w) {
            if !c.applies_window() {
                return Err(KilnError::Msg(format!(
                    "sequence length {} exceeds the model's sliding window {w}, which kiln applies to Gemma, Mistral and Phi-3 only \
                     (Qwen's windowed layers are not implemented)",
                    d[1]
                )));
            }
            if inp.shared_prefix {
                // The window counts keys by index; an answer after the other branch would be
                // further from its prompt than its positions say.
                return Err(KilnError::Msg(format!(
                    "preference rows of {} tokens with a shared prompt exceed the sliding window {w}",
                    d[1]
                )));
            }
        }
        let ctx = Ctx {
            b: d[0],
            t: d[1],
            pos: inp.pos.clone(),
            seg: inp.seg.cloned(),
            shared_prefix: inp.shared_prefix,
            base_only: inp.base_only,
            inv_freq: self.rope_freqs(inp.pos)?,
            local_inv_freq: self.local_inv_freq.clone(),
            cfg: c.clone(),
        };
        // Mixed precision where the backend runs it: the blocks' activations in its 16-bit type,
        // the final hidden state back in f32 for the LM head and the loss.
        let x = self.embed(tape, &inp.ids.reshape([d[0] * d[1]])?)?;
        let mut x = ops::cast(tape, &x, self.activation_dtype())?;
        for (i, blk) in self.blocks.iter().enumerate() {
            let adapters: [Option<Lora>; 7] = lora.and_then(|l| l.layer(i)).unwrap_or_default();
            x = if checkpoint {
                let (blk, ctx) = (blk.clone(), ctx.clone());
                let f = Rc::new(move |tp: &Tape, x: &Var| -> kiln_core::Result<Var> {
                    block(tp, x, &blk, &adapters, &ctx, None).map_err(into_core)
                });
                tape.checkpoint(&x, f)?
            } else {
                block(tape, &x, blk, &adapters, &ctx, None)?
            };
        }
        let h = ops::rms_norm(tape, &x, &self.norm, c.rms_norm_eps)?;
        Ok(ops::cast(tape, &h, DType::F32)?)
    }

    /// The type the blocks' activations travel in during [`Llama::hidden`]: the override set by
    /// [`Llama::set_activation_dtype`], else the backend's choice (bf16 on CUDA, f32 elsewhere).
    /// Decoding with a KV cache stays in f32 (the cache is f32).
    pub fn activation_dtype(&self) -> DType {
        self.act.unwrap_or_else(|| self.backend().activation_dtype())
    }

    /// Pins the activations' type (`None`: the backend's choice).
    pub fn set_activation_dtype(&mut self, dtype: Option<DType>) {
        self.act = dtype;
    }

    /// Logits `[B, T, V]`.
    pub fn forward(&self, tape: &Tape, inp: &Inputs<'_>, lora: Option<&LoraSet>, checkpoint: bool) -> Result<Var> {
        let h = self.hidden(tape, inp, lora, checkpoint)?;
        let mut logits = ops::linear(tape, &h, self.head(), None, None)?;
        if let Some(cap) = self.final_softcap() {
            logits = ops::softcap(tape, &logits, cap)?;
        }
        let d = inp.ids.dims();
        Ok(ops::reshape(tape, &logits, [d[0], d[1], self.config.vocab_size])?)
    }

    /// The RoPE frequencies of a batch at positions `pos`: LongRoPE's long ones when its
    /// largest position passes the original context, else the model's own.
    fn rope_freqs(&self, pos: &Tensor) -> Result<Tensor> {
        match &self.long_rope {
            Some((long, original)) if super::phi3::uses_long(pos, *original)? => Ok(long.clone()),
            _ => Ok(self.inv_freq.clone()),
        }
    }

    /// The LM head: its own weight, or the embedding when tied.
    fn head(&self) -> &Var {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Gemma's soft-cap of the logits.
    fn final_softcap(&self) -> Option<f64> {
        self.config.gemma.as_ref().and_then(|g| g.final_softcap)
    }

    /// Token embeddings `[N, H]` of `ids` `[N]` (times Gemma's normalizer).
    fn embed(&self, tape: &Tape, ids: &Tensor) -> Result<Var> {
        let x = ops::embedding(tape, &self.embed, ids)?;
        Ok(match self.embed_scale {
            Some(s) => ops::scale(tape, &x, s)?,
            None => x,
        })
    }

    /// Mean cross-entropy against `targets` `[B, T]` (`I32`, already shifted: the token that
    /// should follow each position; < 0 ignored).
    pub fn loss(
        &self,
        tape: &Tape,
        inp: &Inputs<'_>,
        targets: &Tensor,
        lora: Option<&LoraSet>,
        checkpoint: bool,
    ) -> Result<CeResult> {
        // The LM head and the loss are fused: logits exist a chunk of rows at a time (the
        // backend's chunk: 128 rows on the CPU, thousands on a GPU).
        let h = self.hidden(tape, inp, lora, checkpoint)?;
        let n = inp.ids.numel();
        let cap = self.final_softcap();
        let chunk = h.value().backend().loss_chunk_rows(self.head().value().shape().rows());
        Ok(ops::linear_cross_entropy_capped(tape, &h, self.head(), &targets.reshape([n])?, chunk, cap)?)
    }

    /// Per-position negative log-likelihood `[B·T]` of `targets` (0 where ignored): summed
    /// over a sequence's answer tokens, minus its log-probability (preference losses).
    pub fn token_nll(
        &self,
        tape: &Tape,
        inp: &Inputs<'_>,
        targets: &Tensor,
        lora: Option<&LoraSet>,
        checkpoint: bool,
    ) -> Result<Var> {
        let h = self.hidden(tape, inp, lora, checkpoint)?;
        let n = inp.ids.numel();
        let cap = self.final_softcap();
        let chunk = h.value().backend().loss_chunk_rows(self.head().value().shape().rows());
        Ok(ops::linear_token_nll_capped(tape, &h, self.head(), &targets.reshape([n])?, chunk, cap)?)
    }
}

/// Keys and values of one block for the positions decoded so far (batch 1, f32).
pub struct LayerCache {
    k: Vec<f32>,
    v: Vec<f32>,
    kv_heads: usize,
}

/// The KV cache of a whole model for one sequence.
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
}

impl KvCache {
    /// An empty cache for `model`.
    pub fn new(model: &Llama) -> KvCache {
        let kv_heads = model.config.num_kv_heads;
        KvCache {
            layers: (0..model.config.num_layers).map(|_| LayerCache { k: vec![], v: vec![], kv_heads }).collect(),
            len: 0,
        }
    }
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True before the first step.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Forgets every position from `n` on (a conversation that diverged after `n` tokens).
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len {
            return;
        }
        for l in &mut self.layers {
            let per = l.k.len() / self.len;
            l.k.truncate(n * per);
            l.v.truncate(n * per);
        }
        self.len = n;
    }
}

impl Llama {
    /// Runs `ids` (the next tokens of one sequence) on top of `cache`, appends their keys and
    /// values to it, and returns the logits of the last one (`[vocab]`).
    pub fn forward_cached(&self, ids: &[i32], cache: &mut KvCache, lora: Option<&LoraSet>) -> Result<Vec<f32>> {
        let c = &self.config;
        let n = ids.len();
        if n == 0 {
            return Err(KilnError::Msg("forward_cached: no tokens".into()));
        }
        if let Some(w) = c.sliding_window.filter(|&w| cache.len + n > w && !c.applies_window()) {
            return Err(KilnError::Msg(format!("context of {} tokens exceeds the sliding window {w}", cache.len + n)));
        }
        let tape = Tape::no_grad();
        let pos: Vec<i32> = (cache.len..cache.len + n).map(|p| p as i32).collect();
        let ctx = Ctx {
            b: 1,
            t: n,
            pos: Tensor::from_vec(pos, [1, n])?,
            seg: None,
            shared_prefix: false,
            base_only: false,
            inv_freq: self.rope_freqs(&Tensor::from_vec(vec![(cache.len + n - 1) as i32], [1])?)?,
            local_inv_freq: self.local_inv_freq.clone(),
            cfg: c.clone(),
        };
        let mut x = self.embed(&tape, &Tensor::from_vec(ids.to_vec(), [n])?)?;
        for (i, (blk, lc)) in self.blocks.iter().zip(cache.layers.iter_mut()).enumerate() {
            let adapters: [Option<Lora>; 7] = lora.and_then(|l| l.layer(i)).unwrap_or_default();
            x = block(&tape, &x, blk, &adapters, &ctx, Some(lc))?;
        }
        cache.len += n;
        let last = Var::constant(x.value().narrow0(n - 1, 1)?);
        let h = ops::rms_norm(&tape, &last, &self.norm, c.rms_norm_eps)?;
        let mut logits = ops::linear(&tape, &h, self.head(), None, None)?;
        if let Some(cap) = self.final_softcap() {
            logits = ops::softcap(&tape, &logits, cap)?;
        }
        Ok(logits.value().to_vec_f32()?)
    }
}

fn into_core(e: KilnError) -> kiln_core::Error {
    match e {
        KilnError::Core(c) => c,
        other => kiln_core::Error::Msg(other.to_string()),
    }
}

fn lin(tape: &Tape, x: &Var, l: &Linear, lora: &Option<Lora>) -> Result<Var> {
    Ok(ops::linear(tape, x, &l.w, l.b.as_ref(), lora.as_ref())?)
}

/// One decoder block on `x` `[B·T, H]`.
fn block(
    tape: &Tape,
    x: &Var,
    blk: &Block,
    ad: &[Option<Lora>; 7],
    ctx: &Ctx,
    cache: Option<&mut LayerCache>,
) -> Result<Var> {
    let c = &ctx.cfg;
    let (bt, hd) = (ctx.b * ctx.t, c.head_dim);
    let [lq, lk, lv, lo, lg, lu, ld] = &blk.linears;
    let h = ops::rms_norm(tape, x, &blk.attn_norm, c.rms_norm_eps)?;
    let heads = |v: Var, n: usize| ops::reshape(tape, &v, [ctx.b, ctx.t, n, hd]);
    let mut q = heads(lin(tape, &h, lq, &ad[0])?, c.num_heads)?;
    let mut k = heads(lin(tape, &h, lk, &ad[1])?, c.num_kv_heads)?;
    let v = heads(lin(tape, &h, lv, &ad[2])?, c.num_kv_heads)?;
    if let (Some(qn), Some(kn)) = (&blk.q_norm, &blk.k_norm) {
        q = ops::rms_norm(tape, &q, qn, c.rms_norm_eps)?;
        k = ops::rms_norm(tape, &k, kn, c.rms_norm_eps)?;
    }
    // Local (sliding) layers use plain RoPE; global ones the model's scaling and its factor.
    let (inv_freq, m) = match ctx.local_inv_freq.as_ref().filter(|_| blk.local_rope) {
        Some(f) => (f, 1.0),
        None => (&ctx.inv_freq, c.rope_mscale()),
    };
    let q = ops::rope(tape, &q, &ctx.pos, inv_freq, m)?;
    let mut k = ops::rope(tape, &k, &ctx.pos, inv_freq, m)?;
    let mut v = v;
    if let Some(c) = cache {
        // Decoding: this step's keys/values join the cached ones; queries are the new rows.
        c.k.extend(k.value().to_vec_f32()?);
        c.v.extend(v.value().to_vec_f32()?);
        let tk = c.k.len() / (c.kv_heads * hd);
        k = Var::constant(Tensor::from_vec(c.k.clone(), [1, tk, c.kv_heads, hd])?);
        v = Var::constant(Tensor::from_vec(c.v.clone(), [1, tk, c.kv_heads, hd])?);
    }
    let window = c.layer_window(blk.layer);
    let softcap = c.gemma.as_ref().and_then(|g| g.attn_softcap);
    let opts = ops::AttnOptions {
        seg: ctx.seg.as_ref(),
        shared_prefix: ctx.shared_prefix,
        scale: c.attention_scale(),
        window,
        softcap,
    };
    let a = ops::attention_with(tape, &q, &k, &v, &opts)?;
    let a = ops::reshape(tape, &a, [bt, c.num_heads * hd])?;
    let mut o = lin(tape, &a, lo, &ad[3])?;
    if let Some(n) = &blk.post_attn_norm {
        o = ops::rms_norm(tape, &o, n, c.rms_norm_eps)?;
    }
    if let Some(bn) = blk.bottleneck.as_ref().filter(|_| !ctx.base_only) {
        o = bn[0].apply(tape, &o)?;
    }
    let x = ops::add(tape, x, &o)?;
    let h = ops::rms_norm(tape, &x, &blk.mlp_norm, c.rms_norm_eps)?;
    let g = lin(tape, &h, lg, &ad[4])?;
    let u = lin(tape, &h, lu, &ad[5])?;
    let act = if c.is_gemma() { ops::geglu(tape, &g, &u)? } else { ops::swiglu(tape, &g, &u)? };
    let mut m = lin(tape, &act, ld, &ad[6])?;
    if let Some(n) = &blk.post_mlp_norm {
        m = ops::rms_norm(tape, &m, n, c.rms_norm_eps)?;
    }
    if let Some(bn) = blk.bottleneck.as_ref().filter(|_| !ctx.base_only) {
        m = bn[1].apply(tape, &m)?;
    }
    Ok(ops::add(tape, &x, &m)?)
}

/// The name of the MLP's input norm: Gemma's `pre_feedforward_layernorm` (its
/// `post_attention_layernorm` normalizes the attention output), else `post_attention_layernorm`.
fn mlp_norm_name(c: &ModelConfig) -> &'static str {
    if c.is_gemma() { "pre_feedforward_layernorm" } else { "post_attention_layernorm" }
}

/// Positions `0..T` for every row.
pub fn default_positions(b: usize, t: usize) -> Result<Tensor> {
    Ok(Tensor::from_vec((0..b * t).map(|i| (i % t) as i32).collect::<Vec<_>>(), [b, t])?)
}

/// An adapter tensor's error, with adapter_config.json named as the other side of a mismatch.
fn adapter_err(dir: &Path, e: KilnError) -> KilnError {
    match e {
        KilnError::Tensor { path, tensor, detail } => KilnError::Tensor {
            path,
            tensor,
            detail: format!("{detail} (from {})", dir.join("adapter_config.json").display()),
        },
        other => other,
    }
}
