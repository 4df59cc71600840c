//! `kiln chat`: a conversation with a model through its chat template, answers streamed as
//! they are decoded. Lines starting with `/` are commands. Reads standard input line by line,
//! so a script can drive it (`printf 'hi\n/quit\n' | kiln chat …`); a prompt is shown only on
//! a terminal.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use clap::Args;
use kiln::infer::{BYTES_PER_TOKEN, Conversation, GenOptions, Session, SessionConfig, Turn};

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

/// One model in the conversation, with its own history and KV cache.
struct Speaker {
    label: &'static str,
    conv: Conversation,
}

fn open(cfg: &SessionConfig) -> Result<Session> {
    let s = Session::open(cfg)?;
    if s.template().is_none() {
        bail!("{}: the model has no chat template (kiln generate --raw continues plain text)", s.path().display());
    }
    Ok(s)
}

/// Applies `name=value` settings to `o` — all of them, or none when one is invalid.
fn set_params(opts: &mut GenOptions, args: &str) -> Result<()> {
    let mut o = opts.clone();
    for kv in args.split_whitespace() {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("/params: `{kv}` is not name=value"))?;
        o.set(k, v)?;
    }
    o.validate()?;
    *opts = o;
    Ok(())
}

pub fn run(a: ChatArgs) -> Result<()> {
    if a.compare && a.adapter.is_none() {
        bail!("--compare needs --adapter (the base model answers beside the tuned one)");
    }
    let mut speakers = Vec::new();
    if a.compare {
        let cfg = SessionConfig { model: a.model.clone(), adapter: None, template: None };
        speakers.push(Speaker { label: "base", conv: Conversation::new(open(&cfg)?) });
    }
    let cfg = SessionConfig { model: a.model.clone(), adapter: a.adapter.clone(), template: None };
    speakers.push(Speaker { label: "tuned", conv: Conversation::new(open(&cfg)?) });
    let path = speakers[0].conv.session.path().to_path_buf();
    let mut system = a.system.clone();
    let mut opts = a.sampling.options()?;
    // One message over BYTES_PER_TOKEN bytes per token of the context cannot fit.
    let limit = speakers.iter().map(|s| s.conv.session.input_limit()).min().unwrap_or(0);
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
                    speakers.iter_mut().for_each(|s| s.conv.reset());
                    println!("(conversation reset)");
                }
                "system" => {
                    system = (!rest.trim().is_empty()).then(|| rest.trim().to_string());
                    speakers.iter_mut().for_each(|s| s.conv.forget_turns());
                    println!(
                        "(system message {}; conversation reset)",
                        if system.is_some() { "set" } else { "cleared" }
                    );
                }
                "params" => match set_params(&mut opts, rest) {
                    Ok(()) => println!("({})", opts.line()),
                    Err(e) => println!("(error: {e})"),
                },
                "help" => println!("({HELP})"),
                other => println!("(unknown command /{other}; {HELP})"),
            }
            continue;
        }
        for s in speakers.iter_mut() {
            let on_start = &mut |note: Option<&str>| {
                if let Some(note) = note {
                    eprintln!("(note: {note})");
                }
                if a.compare {
                    print!("[{}] ", s.label);
                }
            };
            let turn = s.conv.turn(system.as_deref(), msg, &opts, &a.sampling.stop, on_start, &mut |t| {
                // Streamed as decoded; a closed stdout only ends the stream.
                let _ = out.write_all(t.as_bytes()).and_then(|_| out.flush());
            })?;
            match turn {
                Turn::Refused(e) => println!("(error: {e})"),
                Turn::Answered(g) => {
                    println!();
                    let n = g.generated.tokens.len();
                    eprintln!("({n} tokens, {:.1} tokens/s)", n as f64 / g.generated.decode_s.max(1e-9));
                }
            }
        }
    }
    Ok(())
}
