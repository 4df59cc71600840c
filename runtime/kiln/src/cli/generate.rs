//! `kiln generate`: text from a model, through its chat template unless `--raw`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use kiln::infer::{
    BYTES_PER_TOKEN, GenOptions, Message, Request, Role, Session, SessionConfig, fit_context, validate_stops,
};

/// Sampling flags shared by `generate`, `chat` and `eval`.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// At most this many new tokens; clamped (with a note) to what the model's context leaves
    /// after the prompt. A prompt that fills the context is refused.
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
    /// Stop when this text appears (repeatable, not empty); it is cut from the output. EOS
    /// always stops.
    #[arg(long = "stop")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// The decoding options, checked (ranges, and no empty `--stop`) before any model loads.
    pub fn options(&self) -> Result<GenOptions> {
        let o = GenOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
        };
        o.validate().map_err(|e| anyhow!("--{}", e.to_string().replace('_', "-")))?;
        validate_stops(&self.stop)?;
        Ok(o)
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
    let mut opts = a.sampling.options()?;
    let cfg = SessionConfig { model: a.model.clone(), adapter: a.adapter.clone(), template: None };
    let mut session = Session::open(&cfg)?;
    let ctx = session.context_len();
    // A prompt over BYTES_PER_TOKEN bytes per token of the context cannot fit: refused before
    // it is read whole or tokenized.
    let limit = session.input_limit();
    let why = format!("{BYTES_PER_TOKEN} bytes per token of the model's {ctx}-token context: it cannot fit");
    let (prompt_text, source) = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) if p.len() > limit => bail!("--prompt: longer than {limit} bytes, {why}"),
        (Some(p), _) => (p.clone(), "--prompt".to_string()),
        (None, Some(f)) => (kiln::data::read::read_text(f, limit, &why)?, f.display().to_string()),
        (None, None) => return Err(anyhow!("--prompt or --prompt-file is required")),
    };
    if let Some(d) = &a.device {
        kiln_wgpu::choose(d);
    }
    let be = kiln::backend_select::pick(&a.backend, a.device.as_deref(), kiln::backend_select::Auto::BestGpu)?;
    if be.name() != "cpu" {
        session.to_backend(be)?;
    }
    let turns = [Message { role: Role::User, content: prompt_text }];
    let req = if a.raw {
        Request::Raw(&turns[0].content)
    } else {
        Request::Chat { system: a.system.as_deref(), turns: &turns }
    };
    let prompt = session.prompt(&req)?;
    if let Some(note) = fit_context(ctx, prompt.len(), &mut opts).with_context(|| source.clone())? {
        eprintln!("note: {note}");
    }
    let mut stdout = std::io::stdout();
    let out = session.generate(&prompt, &opts, &a.sampling.stop, &mut |s| {
        if !a.json {
            // Streamed as decoded; a closed stdout only ends the stream.
            let _ = stdout.write_all(s.as_bytes()).and_then(|_| stdout.flush());
        }
    })?;
    if a.json {
        println!("{}", out.to_json(&prompt));
    } else {
        println!();
        eprintln!("({})", out.summary(prompt.len()));
    }
    Ok(())
}
