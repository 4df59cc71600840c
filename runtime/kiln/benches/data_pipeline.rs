//! Data preparation throughput: 10 000 chat rows through validation-free normalization, the
//! chat template, the tokenizer (with the assistant-only mask) and packing to 2048 tokens.
//! Throughput is in rows. Also packing alone: a million short rows.

use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln::data::batch::{PackStats, pack, truncate};
use kiln::data::render::{Renderer, Tokenized};
use kiln::data::template::ChatTemplate;
use kiln::data::tokenizer::TextTokenizer;
use kiln::data::{Example, Message, Role};
use rayon::prelude::*;

fn rows(n: usize) -> Vec<Example> {
    let text = include_str!("../../../data/demo.txt");
    let words: Vec<&str> = text.split_whitespace().collect();
    (0..n)
        .map(|i| {
            let pick = |k: usize, len: usize| -> String {
                (0..len).map(|j| words[(i * 31 + k * 7 + j) % words.len()]).collect::<Vec<_>>().join(" ")
            };
            Example::Chat(vec![
                Message { role: Role::System, content: "You are a helpful potter.".into() },
                Message { role: Role::User, content: pick(1, 12 + i % 20) },
                Message { role: Role::Assistant, content: pick(2, 30 + i % 60) },
            ])
        })
        .collect()
}

fn pipeline(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer");
    let r = Renderer {
        tokenizer: TextTokenizer::load(&dir).unwrap(),
        template: Some(ChatTemplate::builtin("chatml").unwrap()),
        train_on_inputs: false,
    };
    let data = rows(10_000);
    let mut g = c.benchmark_group("data_pipeline");
    g.sample_size(10);
    g.throughput(Throughput::Elements(data.len() as u64));
    g.bench_function("chat_10k_rows_template_tokenize_pack", |b| {
        b.iter(|| {
            let toks: Vec<_> = data.par_iter().map(|e| r.tokenize(e).unwrap()).collect();
            let mut st = PackStats::default();
            let toks = truncate(toks, 2048, &mut st);
            pack(&toks, 2048, &mut st)
        })
    });
    // The same with a tokenizer loaded afresh each time, so the pre-token cache starts cold, as
    // it does for a run's one pass over its data.
    g.bench_function("chat_10k_rows_template_tokenize_pack_cold_cache", |b| {
        b.iter_batched(
            || Renderer {
                tokenizer: TextTokenizer::load(&dir).unwrap(),
                template: Some(ChatTemplate::builtin("chatml").unwrap()),
                train_on_inputs: false,
            },
            |r| {
                let toks: Vec<_> = data.par_iter().map(|e| r.tokenize(e).unwrap()).collect();
                let mut st = PackStats::default();
                let toks = truncate(toks, 2048, &mut st);
                pack(&toks, 2048, &mut st)
            },
            criterion::BatchSize::PerIteration,
        )
    });
    // The stages alone, to see where the time goes.
    let turns: Vec<&Vec<Message>> =
        data.iter().filter_map(|e| if let Example::Chat(t) = e { Some(t) } else { None }).collect();
    g.bench_function("chat_10k_rows_render_only", |b| {
        b.iter(|| turns.par_iter().map(|t| r.render_chat(t).unwrap().0.len()).sum::<usize>())
    });
    let texts: Vec<String> = turns.iter().map(|t| r.render_chat(t).unwrap().0).collect();
    g.bench_function("chat_10k_rows_tokenize_only", |b| {
        b.iter(|| texts.par_iter().map(|t| r.tokenizer.encode(t).unwrap().ids.len()).sum::<usize>())
    });
    // With a real 49k-token vocabulary (SmolLM2's, from its GGUF) when KILN_SMOLLM2_GGUF names it.
    if let Some(path) = std::env::var_os("KILN_SMOLLM2_GGUF") {
        let gguf = kiln::formats::gguf::GgufFile::open(std::path::Path::new(&path)).unwrap();
        let r = Renderer {
            tokenizer: TextTokenizer::from_gguf(&gguf).unwrap(),
            template: Some(ChatTemplate::builtin("chatml").unwrap()),
            train_on_inputs: false,
        };
        g.bench_function("chat_10k_rows_template_tokenize_pack_smollm2_vocab", |b| {
            b.iter(|| {
                let toks: Vec<_> = data.par_iter().map(|e| r.tokenize(e).unwrap()).collect();
                let mut st = PackStats::default();
                let toks = truncate(toks, 2048, &mut st);
                pack(&toks, 2048, &mut st)
            })
        });
    }
    g.finish();
    // Packing alone at scale: a million short rows (8–71 tokens) into 2048-token sequences.
    // First-fit with a segment tree over free space is O(n log n); the scan it replaced was
    // quadratic (400 000 rows took 54 s).
    let mut g = c.benchmark_group("packing");
    g.sample_size(10);
    let short: Vec<Tokenized> = (0..1_000_000)
        .map(|i: usize| {
            let n = 8 + (i * 7919) % 64;
            Tokenized { ids: vec![1; n], mask: vec![true; n] }
        })
        .collect();
    g.throughput(Throughput::Elements(short.len() as u64));
    g.bench_function("pack_1m_short_rows_2048", |b| b.iter(|| pack(&short, 2048, &mut PackStats::default()).len()));
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
