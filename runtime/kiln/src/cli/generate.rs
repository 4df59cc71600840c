//! `kiln generate`: text from a model, through its chat template unless `--raw`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use kiln::data::template::ChatTemplate;
use kiln::data::{Message, Role};
use kiln::generate::{GenOptions, Session, chat_prompt, generate_text, raw_prompt};

/// Sampling flags shared by `generate`, `chat` and `eval`.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// 0 decodes greedily.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Sample from the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches p (1: all).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Above 1 discourages repeating tokens of the prompt and output (transformers' rule).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when this text appears (repeatable); it is cut from the output. EOS always stops.
    #[arg(long = "stop")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn options(&self) -> GenOptions {
        GenOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
        }
    }
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A .gguf file or a model directory with tokenizer.json (a merged export works too)
    /// [default: SmolLM2 from the model cache].
    #[arg(long)]
    model: Option<PathBuf>,
    /// The user message (or the raw text with --raw).
    #[arg(long, required_unless_present = "prompt_file", conflicts_with = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt from a file instead.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// An optional system message.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Continue the text as is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// A LoRA adapter folder (PEFT layout: kiln's or PEFT's own), applied unmerged.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// cpu, cuda (--device N), wgpu, cuda-emu or auto: where the model runs. On a GPU each decode
    /// step's linear layers are matrix-vector products reading every weight once, in its own
    /// type (block-quantized weights decoded as read).
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// The GPU: a CUDA ordinal, or a wgpu adapter's index or name.
    #[arg(long)]
    device: Option<String>,
    /// Print JSON only: {"prompt_tokens", "prompt_ids", "tokens": [ids], "logprobs": [log p of
    /// each new token], "text", "stop": "eos"|"stop_string"|"length", "prompt_s",
    /// "prompt_tokens_per_s", "decode_s", "tokens_per_s"}.
    #[arg(long)]
    json: bool,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let prompt_text = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        (None, None) => return Err(anyhow!("--prompt or --prompt-file is required")),
    };
    let path = kiln::models::resolve(a.model.as_deref())?;
    let (mut model, tok, mut lora) = kiln::models::load_with_adapter(&path, a.adapter.as_deref())?;
    if let Some(d) = &a.device {
        kiln_wgpu::choose(d);
    }
    let be = super::train::pick_backend(&a.backend, a.device.as_deref())?;
    if be.name() != "cpu" {
        model.to_backend(be).with_context(|| format!("moving the model to {}", be.name()))?;
        if let Some(l) = lora.as_mut() {
            l.to_backend(be).with_context(|| format!("moving the adapter to {}", be.name()))?;
        }
    }
    let prompt = if a.raw {
        raw_prompt(&tok, &prompt_text)?
    } else {
        let t = ChatTemplate::choose(None, tok.chat_template.as_deref())?
            .ok_or_else(|| anyhow!("{}: no chat template; use --raw", path.display()))?;
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(Message { role: Role::System, content: s.clone() });
        }
        msgs.push(Message { role: Role::User, content: prompt_text });
        chat_prompt(&tok, &t, &msgs)?
    };
    let opts = a.sampling.options();
    let mut stdout = std::io::stdout();
    let session = &mut Session::new(&model);
    let out = generate_text(&model, session, &tok, &prompt, &opts, &a.sampling.stop, lora.as_ref(), &mut |s| {
        if !a.json {
            // Streamed as decoded; a closed stdout only ends the stream.
            let _ = stdout.write_all(s.as_bytes()).and_then(|_| stdout.flush());
        }
    })?;
    let g = &out.generated;
    let n = g.tokens.len();
    let (prompt_tps, tps) = (prompt.len() as f64 / g.prompt_s.max(1e-9), n as f64 / g.decode_s.max(1e-9));
    if a.json {
        println!(
            "{}",
            serde_json::json!({"prompt_tokens": prompt.len(), "prompt_ids": prompt, "tokens": g.tokens,
                "logprobs": g.logprobs, "text": out.text, "stop": g.stop.name(), "prompt_s": g.prompt_s,
                "prompt_tokens_per_s": prompt_tps, "decode_s": g.decode_s, "tokens_per_s": tps})
        );
    } else {
        println!();
        eprintln!(
            "({} prompt tokens in {:.2}s, {prompt_tps:.1} tokens/s; {n} new in {:.2}s, {tps:.1} tokens/s; stop: {})",
            prompt.len(),
            g.prompt_s,
            g.decode_s,
            g.stop.name()
        );
    }
    Ok(())
}
