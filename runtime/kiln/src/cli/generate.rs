//! `kiln generate`: text from a model, through its chat template unless `--raw`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use kiln::data::dataset::BYTES_PER_TOKEN;
use kiln::data::template::ChatTemplate;
use kiln::data::{Message, Role};
use kiln::generate::{
    GenOptions, Session, chat_prompt, context_len, fit_context, generate_text, raw_prompt, validate_stops,
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

/// Reads a text file of at most `limit` bytes, refusing a longer one, or one holding a NUL byte
/// (a binary file such as `/dev/zero`), as soon as it shows, without holding the rest.
pub fn read_bounded(path: &std::path::Path, limit: usize, what: &str) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = match f.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if let Some(i) = chunk[..n].iter().position(|&b| b == 0) {
            bail!("{}: a NUL byte at offset {}: a binary file, not text", path.display(), bytes.len() + i);
        }
        if bytes.len() + n > limit {
            bail!("{}: longer than {limit} bytes, {what}", path.display());
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(bytes).map_err(|e| {
        anyhow!("{}: not UTF-8 text (invalid byte at offset {})", path.display(), e.utf8_error().valid_up_to())
    })
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
    let path = kiln::models::resolve(a.model.as_deref())?;
    let (mut model, tok, mut lora) = kiln::models::load_with_adapter(&path, a.adapter.as_deref())?;
    let ctx = context_len(&model);
    // A prompt over BYTES_PER_TOKEN bytes per token of the context cannot fit: refused before
    // it is read whole or tokenized.
    let limit = ctx.saturating_mul(BYTES_PER_TOKEN);
    let why = format!("{BYTES_PER_TOKEN} bytes per token of the model's {ctx}-token context: it cannot fit");
    let (prompt_text, source) = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) if p.len() > limit => bail!("--prompt: longer than {limit} bytes, {why}"),
        (Some(p), _) => (p.clone(), "--prompt".to_string()),
        (None, Some(f)) => (read_bounded(f, limit, &why)?, f.display().to_string()),
        (None, None) => return Err(anyhow!("--prompt or --prompt-file is required")),
    };
    if let Some(d) = &a.device {
        kiln_wgpu::choose(d);
    }
    let be = kiln::backend_select::pick(&a.backend, a.device.as_deref(), kiln::backend_select::Auto::BestGpu)?;
    if be.name() != "cpu" {
        model.to_backend(be).with_context(|| format!("moving the model to {}", be.name()))?;
        if let Some(l) = lora.as_mut() {
            l.to_backend(be).with_context(|| format!("moving the adapter to {}", be.name()))?;
        }
    }
    let prompt = if a.raw {
        raw_prompt(&tok, &prompt_text)?
    } else {
        let t = ChatTemplate::choose_for(None, tok.chat_template.as_deref(), Some(&path))?
            .ok_or_else(|| anyhow!("{}: no chat template; use --raw", path.display()))?;
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(Message { role: Role::System, content: s.clone() });
        }
        msgs.push(Message { role: Role::User, content: prompt_text });
        chat_prompt(&tok, &t, &msgs)?
    };
    if let Some(note) = fit_context(ctx, prompt.len(), &mut opts).with_context(|| source.clone())? {
        eprintln!("note: {note}");
    }
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
