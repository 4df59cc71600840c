//! The Porter stemmer exactly as NLTK's `PorterStemmer()` (its default NLTK_EXTENSIONS mode),
//! which Google's `rouge-score` applies with `use_stemmer=True`. Ported rule for rule, including
//! NLTK's quirks (the irregular-forms pool, `ies`/`ied` on four-letter words, `fulli`, `logi`),
//! so ROUGE with the stemmer matches the Python package token for token. Words are ASCII
//! lower-case here (rouge-score keeps only `[a-z0-9]` tokens).

const IRREGULAR: [(&str, &str); 16] = [
    ("sky", "sky"),
    ("skies", "sky"),
    ("dying", "die"),
    ("lying", "lie"),
    ("tying", "tie"),
    ("news", "news"),
    ("innings", "inning"),
    ("inning", "inning"),
    ("outings", "outing"),
    ("outing", "outing"),
    ("cannings", "canning"),
    ("canning", "canning"),
    ("howe", "howe"),
    ("proceed", "proceed"),
    ("exceed", "exceed"),
    ("succeed", "succeed"),
];

fn is_vowel(c: u8) -> bool {
    matches!(c, b'a' | b'e' | b'i' | b'o' | b'u')
}

/// NLTK's `_is_consonant`: a `y` is a consonant after a vowel-run parity rule.
fn is_consonant(w: &[u8], mut i: usize) -> bool {
    if is_vowel(w[i]) {
        return false;
    }
    if w[i] == b'y' {
        let mut negate = false;
        while i > 0 && w[i] == b'y' {
            negate = !negate;
            i -= 1;
        }
        return is_vowel(w[i]) == negate;
    }
    true
}

/// Consonant flags in one pass (NLTK's `_consonant_flags`, used by measure and contains-vowel).
fn flags(w: &[u8]) -> Vec<bool> {
    let mut f: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let cons = if is_vowel(c) {
            false
        } else if c == b'y' {
            i == 0 || !f[i - 1]
        } else {
            true
        };
        f.push(cons);
    }
    f
}

/// m: the number of vowel→consonant transitions.
fn measure(w: &[u8]) -> usize {
    flags(w).windows(2).filter(|p| !p[0] && p[1]).count()
}

fn contains_vowel(w: &[u8]) -> bool {
    !flags(w).iter().all(|&c| c)
}

fn ends_double_consonant(w: &[u8]) -> bool {
    w.len() >= 2 && w[w.len() - 1] == w[w.len() - 2] && is_consonant(w, w.len() - 1)
}

fn ends_cvc(w: &[u8]) -> bool {
    let n = w.len();
    (n >= 3
        && is_consonant(w, n - 3)
        && !is_consonant(w, n - 2)
        && is_consonant(w, n - 1)
        && !matches!(w[n - 1], b'w' | b'x' | b'y'))
        || (n == 2 && !is_consonant(w, 0) && is_consonant(w, 1))
}

/// A rule's condition on the stem left after removing the suffix.
type Cond<'a> = &'a dyn Fn(&[u8]) -> bool;

/// NLTK's `_apply_rule_list`: the first rule whose suffix matches decides — applied when its
/// condition holds, else the word is returned unchanged. Suffix `*d` means a double consonant.
fn apply(w: &[u8], rules: &[(&str, &str, Option<Cond<'_>>)]) -> Vec<u8> {
    for (suffix, repl, cond) in rules {
        if *suffix == "*d" && ends_double_consonant(w) {
            let stem = &w[..w.len() - 2];
            return if cond.is_none_or(|c| c(stem)) {
                let mut s = stem.to_vec();
                s.extend_from_slice(repl.as_bytes());
                s
            } else {
                w.to_vec()
            };
        }
        if w.ends_with(suffix.as_bytes()) {
            let stem = &w[..w.len() - suffix.len()];
            return if cond.is_none_or(|c| c(stem)) {
                let mut s = stem.to_vec();
                s.extend_from_slice(repl.as_bytes());
                s
            } else {
                w.to_vec()
            };
        }
    }
    w.to_vec()
}

fn replace_suffix(w: &[u8], suffix: &str, repl: &str) -> Vec<u8> {
    let mut s = w[..w.len() - suffix.len()].to_vec();
    s.extend_from_slice(repl.as_bytes());
    s
}

fn step1a(w: &[u8]) -> Vec<u8> {
    if w.ends_with(b"ies") && w.len() == 4 {
        return replace_suffix(w, "ies", "ie");
    }
    apply(w, &[("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None), ("s", "", None)])
}

fn step1b(w: &[u8]) -> Vec<u8> {
    if w.ends_with(b"ied") {
        return replace_suffix(w, "ied", if w.len() == 4 { "ie" } else { "i" });
    }
    if w.ends_with(b"eed") {
        let stem = &w[..w.len() - 3];
        return if measure(stem) > 0 { replace_suffix(w, "eed", "ee") } else { w.to_vec() };
    }
    let mut inter = None;
    for suffix in ["ed", "ing"] {
        if w.ends_with(suffix.as_bytes()) {
            let stem = &w[..w.len() - suffix.len()];
            if contains_vowel(stem) {
                inter = Some(stem);
                break;
            }
        }
    }
    let Some(stem) = inter else { return w.to_vec() };
    let last = stem.last().copied().unwrap_or(b' ');
    let last_s = [last];
    let last_str = std::str::from_utf8(&last_s).unwrap_or("");
    let not_lsz: Cond<'_> = &|_s: &[u8]| !matches!(last, b'l' | b's' | b'z');
    let m1_cvc: Cond<'_> = &|s: &[u8]| measure(s) == 1 && ends_cvc(s);
    apply(
        stem,
        &[
            ("at", "ate", None),
            ("bl", "ble", None),
            ("iz", "ize", None),
            ("*d", last_str, Some(not_lsz)),
            ("", "e", Some(m1_cvc)),
        ],
    )
}

fn step1c(w: &[u8]) -> Vec<u8> {
    let cond: Cond<'_> = &|s: &[u8]| s.len() > 1 && is_consonant(s, s.len() - 1);
    apply(w, &[("y", "i", Some(cond))])
}

fn positive(s: &[u8]) -> bool {
    measure(s) > 0
}

fn step2(w: &[u8]) -> Vec<u8> {
    if w.ends_with(b"alli") && positive(&w[..w.len() - 4]) {
        return step2(&replace_suffix(w, "alli", "al"));
    }
    let p: Cond<'_> = &positive;
    let logi: Cond<'_> = &|_s: &[u8]| positive(&w[..w.len().saturating_sub(3)]);
    apply(
        w,
        &[
            ("ational", "ate", Some(p)),
            ("tional", "tion", Some(p)),
            ("enci", "ence", Some(p)),
            ("anci", "ance", Some(p)),
            ("izer", "ize", Some(p)),
            ("bli", "ble", Some(p)),
            ("alli", "al", Some(p)),
            ("entli", "ent", Some(p)),
            ("eli", "e", Some(p)),
            ("ousli", "ous", Some(p)),
            ("ization", "ize", Some(p)),
            ("ation", "ate", Some(p)),
            ("ator", "ate", Some(p)),
            ("alism", "al", Some(p)),
            ("iveness", "ive", Some(p)),
            ("fulness", "ful", Some(p)),
            ("ousness", "ous", Some(p)),
            ("aliti", "al", Some(p)),
            ("iviti", "ive", Some(p)),
            ("biliti", "ble", Some(p)),
            ("fulli", "ful", Some(p)),
            ("logi", "log", Some(logi)),
        ],
    )
}

fn step3(w: &[u8]) -> Vec<u8> {
    let p: Cond<'_> = &positive;
    apply(
        w,
        &[
            ("icate", "ic", Some(p)),
            ("ative", "", Some(p)),
            ("alize", "al", Some(p)),
            ("iciti", "ic", Some(p)),
            ("ical", "ic", Some(p)),
            ("ful", "", Some(p)),
            ("ness", "", Some(p)),
        ],
    )
}

fn step4(w: &[u8]) -> Vec<u8> {
    let g: Cond<'_> = &|s: &[u8]| measure(s) > 1;
    let ion: Cond<'_> = &|s: &[u8]| measure(s) > 1 && matches!(s.last(), Some(b's' | b't'));
    let rules: Vec<(&str, &str, Option<Cond<'_>>)> = [
        "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion", "ou", "ism", "ate",
        "iti", "ous", "ive", "ize",
    ]
    .iter()
    .map(|&s| (s, "", Some(if s == "ion" { ion } else { g })))
    .collect();
    apply(w, &rules)
}

fn step5a(w: &[u8]) -> Vec<u8> {
    if let Some(stem) = w.strip_suffix(b"e") {
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            return stem.to_vec();
        }
    }
    w.to_vec()
}

fn step5b(w: &[u8]) -> Vec<u8> {
    let cond: Cond<'_> = &|_s: &[u8]| measure(&w[..w.len() - 1]) > 1;
    apply(w, &[("ll", "l", Some(cond))])
}

/// NLTK's `PorterStemmer().stem(word)` for an ASCII word.
pub fn stem(word: &str) -> String {
    let lower = word.to_lowercase();
    if let Some((_, s)) = IRREGULAR.iter().find(|(w, _)| *w == lower) {
        return s.to_string();
    }
    if word.chars().count() <= 2 || !lower.is_ascii() {
        return lower;
    }
    let mut w = lower.into_bytes();
    for step in [step1a, step1b, step1c, step2, step3, step4, step5a, step5b] {
        w = step(&w);
    }
    String::from_utf8(w).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn paper_examples() {
        for (w, s) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("cats", "cat"),
            ("feed", "feed"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("sing", "sing"),
            ("hopping", "hop"),
            ("falling", "fall"),
            ("filing", "file"),
            ("happy", "happi"),
            ("relational", "relat"),
            ("generalization", "gener"),
            ("skies", "sky"),
            ("dying", "die"),
        ] {
            assert_eq!(super::stem(w), s, "{w}");
        }
    }
}
