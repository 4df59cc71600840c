#!/usr/bin/env python3
"""BLEU / ROUGE / Porter-stemmer fixtures from the reference packages.

Setup: pip install sacrebleu rouge-score nltk
Run from the repository root: python3 tools/make_metric_fixtures.py

Writes tests/fixtures/metrics.json:
- "tokens_13a": [[text, sacrebleu's 13a tokens]] for tricky strings;
- "bleu": corpora {"hyps", "refs", "score", "precisions", "bp", "sys_len", "ref_len"} from
  sacrebleu.BLEU() (defaults: 13a, exp smoothing);
- "rouge": per pair {"target", "prediction", "plain": {...}, "stemmed": {...}} from
  rouge_score.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False/True);
- "stems": [[word, nltk PorterStemmer().stem(word)]].
"""
import json
import os
import random

import sacrebleu
from nltk.stem import porter
from rouge_score import rouge_scorer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

PAIRS = [
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("The cat is on the mat.", "There is a cat on the mat."),
    ("", "A reference with words."),
    ("word", "word"),
    ("word", "other"),
    ("Hello, world! It's 3.14 — isn't it?", "Hello world, it is 3.14 isn't it"),
    ("Crème brûlée costs €5,50 in Zürich.", "Creme brulee costs 5.50 EUR in Zurich."),
    ("日本語のテキスト と English mixed", "English mixed with 日本語"),
    ("x-ray 5-6 1,000,000 e.g. U.S.A.", "x-ray 5 - 6 1,000,000 e.g. USA"),
    ("&quot;quoted&quot; &amp; escaped &lt;tags&gt;", "\"quoted\" & escaped <tags>"),
    ("  leading and trailing spaces  ", "leading and trailing spaces"),
    ("generalization relational conditional happily running", "generalize relate condition happy run"),
    ("The runners were running quickly through the flowering meadows",
     "A runner ran quickly through flowered meadows"),
    ("Ponies, caresses and skies; dying, lying and tying.", "pony caress sky die lie tie"),
    ("Tab\tseparated\nnew lines\r\nand\u00a0nbsp", "Tab separated new lines and nbsp"),
    ("Numbers 12 345 6.7 and 8,9", "numbers 12345 6.7 and 8 , 9"),
    ("ALL CAPS SHOUTING TEXT", "all caps shouting text"),
    ("a a a a a a", "a"),
    ("order 1042: 3 blue bowls, 2 red mugs", "order 1042: 2 red mugs, 3 blue bowls"),
]


def long_pairs(rng, n):
    words = open(os.path.join(ROOT, "data", "demo.txt")).read().split()
    out = []
    for _ in range(n):
        k = rng.randint(5, 80)
        start = rng.randint(0, len(words) - k - 1)
        ref = words[start:start + k]
        hyp = list(ref)
        for _ in range(rng.randint(0, k // 2)):
            op = rng.random()
            i = rng.randrange(len(hyp)) if hyp else 0
            if op < 0.3 and hyp:
                del hyp[i]
            elif op < 0.6:
                hyp.insert(i, rng.choice(words))
            elif hyp:
                hyp[i] = rng.choice(words)
        out.append((" ".join(hyp), " ".join(ref)))
    return out


def main():
    rng = random.Random(0)
    pairs = PAIRS + long_pairs(rng, 60)
    bleu = sacrebleu.BLEU()
    tok = bleu.tokenizer
    tokens = [[t, tok(t.rstrip()).split()] for p in PAIRS for t in p]
    corpora = []
    groups = [pairs, PAIRS, pairs[len(PAIRS):], [pairs[2]], [pairs[3]], [pairs[4]], [pairs[17]], pairs[5:9]]
    for g in groups:
        hyps, refs = [h for h, _ in g], [r for _, r in g]
        s = bleu.corpus_score(hyps, [refs])
        corpora.append({"hyps": hyps, "refs": refs, "score": s.score, "precisions": s.precisions, "bp": s.bp,
                        "sys_len": s.sys_len, "ref_len": s.ref_len})
    plain = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    stemmed = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)

    def prf(scores):
        return {k: [v.precision, v.recall, v.fmeasure] for k, v in scores.items()}

    rouge = [{"target": r, "prediction": h, "plain": prf(plain.score(r, h)), "stemmed": prf(stemmed.score(r, h))}
             for h, r in pairs]
    stemmer = porter.PorterStemmer()
    vocab = set()
    for h, r in pairs:
        vocab.update(w.lower() for w in (h + " " + r).replace(",", " ").replace(".", " ").split() if w.isalpha())
    vocab.update(["caresses", "ponies", "ties", "caress", "cats", "feed", "agreed", "plastered", "bled", "motoring",
                  "sing", "conflated", "troubled", "sized", "hopping", "tanned", "falling", "hissing", "fizzed",
                  "failing", "filing", "happy", "sky", "relational", "conditional", "rational", "valenci",
                  "hesitanci", "digitizer", "conformabli", "radicalli", "differentli", "vileli", "analogousli",
                  "vietnamization", "predication", "operator", "feudalism", "decisiveness", "hopefulness",
                  "callousness", "formaliti", "sensitiviti", "sensibiliti", "triplicate", "formative",
                  "formalize", "electriciti", "electrical", "hopeful", "goodness", "revival", "allowance",
                  "inference", "airliner", "gyroscopic", "adjustable", "defensible", "irritant", "replacement",
                  "adjustment", "dependent", "adoption", "homologou", "communism", "activate", "angulariti",
                  "homologous", "effective", "bowdlerize", "probate", "rate", "cease", "controll", "roll",
                  "dying", "lying", "tying", "news", "innings", "outings", "cannings", "howe", "proceed",
                  "exceed", "succeed", "skies", "spied", "died", "flies", "generously", "fully", "analogi",
                  "yyyy", "syzygy", "toy", "ivy", "trouble", "oaten", "orrery", "by", "tree", "hopefulli",
                  "biologi", "sociologi", "alli", "realli", "bally", "playing", "obeyed", "enjoying"])
    stems = [[w, stemmer.stem(w)] for w in sorted(vocab)]
    out = {"tokens_13a": tokens, "bleu": corpora, "rouge": rouge, "stems": stems}
    path = os.path.join(ROOT, "tests", "fixtures", "metrics.json")
    with open(path, "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)
    print("wrote", path, os.path.getsize(path), "bytes;", len(corpora), "corpora,", len(rouge), "pairs,",
          len(stems), "stems")


if __name__ == "__main__":
    main()
