//! `kiln chat`: a conversation with a model through its chat template, answers streamed as
//! they are decoded. Lines starting with `/` are commands. Reads standard input line by line,
//! so a script can drive it (`printf 'hi\n/quit\n' | kiln chat …`); a prompt is shown only on
//! a terminal.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use clap::Args;
use kiln::adapters::LoraSet;
use kiln::data::budget::BYTES_PER_TOKEN;
use kiln::data::template::ChatTemplate;
use kiln::data::tokenizer::TextTokenizer;
use kiln::data::{Message, Role};
use kiln::generate::{GenOptions, Session, chat_prompt, context_len, fit_context, generate_text};
use kiln::model::Llama;

use super::generate::SamplingArgs;

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// A .gguf file or a model directory [default: SmolLM2 from the model cache].
    #[arg(long)]
    model: Option<PathBuf>,
    /// A tuned adapter applied to the model (unmerged).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The system message.
    #[arg(long)]
    system: Option<String>,
    /// Answer each message twice, base model then tuned model (needs --adapter).
    #[arg(long)]
    compare: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
}

const HELP: &str = "commands: /reset (forget the conversation), /system TEXT (set the system message and reset), \
/params [name=value …] (show or set temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed), /quit";

/// One model in the conversation, with its own history.
struct Speaker {
    label: &'static str,
    model: Llama,
    tok: TextTokenizer,
    lora: Option<LoraSet>,
    template: ChatTemplate,
    history: Vec<Message>,
    /// The conversation's KV cache: each turn runs only its new tokens.
    session: Session,
}

fn template_of(tok: &TextTokenizer, path: &std::path::Path) -> Result<ChatTemplate> {
    ChatTemplate::choose_for(None, tok.chat_template.as_deref(), Some(path))?.ok_or_else(|| {
        anyhow!("{}: the model has no chat template (kiln generate --raw continues plain text)", path.display())
    })
}

/// Applies `name=value` settings to `o` — all of them, or none when one is invalid.
fn set_params(opts: &mut GenOptions, args: &str) -> Result<()> {
    let mut o = opts.clone();
    for kv in args.split_whitespace() {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("/params: `{kv}` is not name=value"))?;
        let bad = |e: &dyn std::fmt::Display| anyhow!("/params {k}: `{v}`: {e}");
        match k {
            "temperature" => o.temperature = v.parse().map_err(|e| bad(&e))?,
            "top_k" => o.top_k = v.parse().map_err(|e| bad(&e))?,
            "top_p" => o.top_p = v.parse().map_err(|e| bad(&e))?,
            "repetition_penalty" => o.repetition_penalty = v.parse().map_err(|e| bad(&e))?,
            "max_new_tokens" => o.max_new_tokens = v.parse().map_err(|e| bad(&e))?,
            "seed" => o.seed = v.parse().map_err(|e| bad(&e))?,
            other => bail!(
                "/params: unknown `{other}` (temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed)"
            ),
        }
    }
    o.validate()?;
    *opts = o;
    Ok(())
}

fn params_line(o: &GenOptions) -> String {
    format!(
        "temperature={} top_k={} top_p={} repetition_penalty={} max_new_tokens={} seed={}",
        o.temperature, o.top_k, o.top_p, o.repetition_penalty, o.max_new_tokens, o.seed
    )
}

pub fn run(a: ChatArgs) -> Result<()> {
    if a.compare && a.adapter.is_none() {
        bail!("--compare needs --adapter (the base model answers beside the tuned one)");
    }
    let path = kiln::models::resolve(a.model.as_deref())?;
    let mut speakers = Vec::new();
    if a.compare {
        let (model, tok) = kiln::models::load_with_tokenizer(&path, false)?;
        let template = template_of(&tok, &path)?;
        let session = Session::new(&model);
        speakers.push(Speaker { label: "base", model, tok, lora: None, template, history: vec![], session });
    }
    let (model, tok, lora) = kiln::models::load_with_adapter(&path, a.adapter.as_deref())?;
    let template = template_of(&tok, &path)?;
    let session = Session::new(&model);
    speakers.push(Speaker { label: "tuned", model, tok, lora, template, history: vec![], session });
    let mut system = a.system.clone();
    let mut opts = a.sampling.options()?;
    // One message over BYTES_PER_TOKEN bytes per token of the context cannot fit.
    let limit = speakers.iter().map(|s| context_len(&s.model)).min().unwrap_or(0).saturating_mul(BYTES_PER_TOKEN);
    let tty = std::io::stdin().is_terminal();
    let mut out = std::io::stdout();
    if tty {
        eprintln!("kiln chat with {} — {HELP}", path.display());
    }
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut buf = Vec::new();
    loop {
        if tty {
            print!("> ");
            out.flush()?;
        }
        // Lines are read with a bound, so an endless line (a binary file on stdin) ends with an
        // error instead of filling memory.
        buf.clear();
        if (&mut input).take(limit as u64 + 1).read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        if buf.len() > limit && !buf.ends_with(b"\n") {
            bail!(
                "standard input: a message longer than {limit} bytes ({BYTES_PER_TOKEN} bytes per token of the model's context): it cannot fit"
            );
        }
        let line = std::str::from_utf8(&buf).map_err(|e| anyhow!("standard input: not UTF-8 text: {e}"))?;
        let msg = line.trim();
        if msg.is_empty() {
            continue;
        }
        if let Some(cmd) = msg.strip_prefix('/') {
            let (name, rest) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
            match name {
                "quit" | "exit" => break,
                "reset" => {
                    speakers.iter_mut().for_each(|s| {
                        s.history.clear();
                        s.session.clear();
                    });
                    println!("(conversation reset)");
                }
                "system" => {
                    system = (!rest.trim().is_empty()).then(|| rest.trim().to_string());
                    speakers.iter_mut().for_each(|s| s.history.clear());
                    println!(
                        "(system message {}; conversation reset)",
                        if system.is_some() { "set" } else { "cleared" }
                    );
                }
                "params" => match set_params(&mut opts, rest) {
                    Ok(()) => println!("({})", params_line(&opts)),
                    Err(e) => println!("(error: {e})"),
                },
                "help" => println!("({HELP})"),
                other => println!("(unknown command /{other}; {HELP})"),
            }
            continue;
        }
        for s in speakers.iter_mut() {
            s.history.push(Message { role: Role::User, content: msg.to_string() });
            let mut msgs: Vec<Message> =
                system.iter().map(|t| Message { role: Role::System, content: t.clone() }).collect();
            msgs.extend(s.history.iter().cloned());
            let ids = chat_prompt(&s.tok, &s.template, &msgs)?;
            // A conversation that outgrew the context is refused turn by turn: the message is
            // dropped and the conversation stays as it was (/reset starts over).
            let mut turn = opts.clone();
            match fit_context(context_len(&s.model), ids.len(), &mut turn) {
                Ok(Some(note)) => eprintln!("(note: {note})"),
                Ok(None) => {}
                Err(e) => {
                    s.history.pop();
                    println!("(error: {e})");
                    continue;
                }
            }
            if a.compare {
                print!("[{}] ", s.label);
            }
            let g = generate_text(
                &s.model,
                &mut s.session,
                &s.tok,
                &ids,
                &turn,
                &a.sampling.stop,
                s.lora.as_ref(),
                &mut |t| {
                    // Streamed as decoded; a closed stdout only ends the stream.
                    let _ = out.write_all(t.as_bytes()).and_then(|_| out.flush());
                },
            )?;
            println!();
            let n = g.generated.tokens.len();
            eprintln!("({n} tokens, {:.1} tokens/s)", n as f64 / g.generated.decode_s.max(1e-9));
            s.history.push(Message { role: Role::Assistant, content: g.text.trim().to_string() });
        }
    }
    Ok(())
}
