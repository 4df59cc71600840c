//! `kiln generate`: text from a model, through its chat template unless `--raw`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, anyhow};
use clap::Args;
use kiln::data::template::ChatTemplate;
use kiln::data::{Message, Role};
use kiln::generate::{GenOptions, generate_with_logprobs};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A .gguf file or a model directory with tokenizer.json [default: SmolLM2 from the model
    /// cache].
    #[arg(long)]
    model: Option<PathBuf>,
    /// The user message (or the raw text with --raw).
    #[arg(long)]
    prompt: String,
    /// An optional system message.
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 decodes greedily.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue the text as is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// A LoRA adapter folder (PEFT layout: kiln's or PEFT's own), applied unmerged.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Print JSON only: {"prompt_tokens", "prompt_ids", "tokens": [ids], "logprobs": [log p of
    /// each new token], "text", "tokens_per_s"}.
    #[arg(long)]
    json: bool,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let path = kiln::models::resolve(a.model.as_deref())?;
    let (model, tok, lora) = kiln::models::load_with_adapter(&path, a.adapter.as_deref())?;
    let text = if a.raw {
        a.prompt.clone()
    } else {
        let src =
            tok.chat_template.as_deref().ok_or_else(|| anyhow!("{}: no chat template; use --raw", path.display()))?;
        let t = ChatTemplate::new(src, "the model's chat_template")?;
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(Message { role: Role::System, content: s.clone() });
        }
        msgs.push(Message { role: Role::User, content: a.prompt.clone() });
        let (bos, eos) =
            (tok.bos.as_ref().map_or("", |s| s.text.as_str()), tok.eos.as_ref().map_or("", |s| s.text.as_str()));
        t.render(&msgs, true, bos, eos)?
    };
    let mut prompt: Vec<i32> = tok.encode(&text)?.ids.iter().map(|&i| i as i32).collect();
    if let Some(b) = tok.bos.as_ref().filter(|_| a.raw && tok.add_bos) {
        prompt.insert(0, b.id as i32);
    }
    let stop: Vec<i32> = tok.eos.iter().map(|s| s.id as i32).collect();
    let t0 = Instant::now();
    let opts = GenOptions { max_new_tokens: a.max_new_tokens, temperature: a.temperature, seed: a.seed };
    let (out, logprobs) = generate_with_logprobs(&model, &prompt, &stop, &opts, lora.as_ref())?;
    let el = t0.elapsed().as_secs_f64();
    let shown: Vec<u32> = out.iter().filter(|t| !stop.contains(t)).map(|&t| t as u32).collect();
    let completion = tok.decode(&shown)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"prompt_tokens": prompt.len(), "prompt_ids": prompt, "tokens": out, "logprobs": logprobs, "text": completion, "tokens_per_s": out.len() as f64 / el})
        );
    } else {
        println!("{completion}");
        eprintln!(
            "({} prompt tokens, {} new in {:.2}s, {:.1} tokens/s)",
            prompt.len(),
            out.len(),
            el,
            out.len() as f64 / el
        );
    }
    Ok(())
}
