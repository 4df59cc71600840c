//! SASS as NVIDIA's disassembler prints it (`nvdisasm -c`, CUDA 13, reading the cubins of
//! ptxas 12.9): functions, their instructions and labels, the loops their backward branches
//! close, and an instruction mix by the classes that decide a kernel's speed.
//!
//! The lines read: `//--- .text.NAME ---` opens a function, `.L_x_N:` labels the next
//! instruction, and `/*0a30*/  @!P0 OPCODE.MODS operands ;` is one instruction (address, optional
//! predicate, opcode with modifiers). Everything else (directives, blank lines) is skipped.

use std::collections::HashMap;

/// One SASS instruction.
#[derive(Clone, Debug, PartialEq)]
pub struct Instr {
    pub addr: u64,
    /// The full opcode with its modifiers, e.g. `HMMA.16816.F32.BF16`.
    pub opcode: String,
    /// The label a branch jumps to (`BRA `(.L_x_7)`).
    pub target: Option<String>,
}

/// One kernel's code.
#[derive(Clone, Debug, Default)]
pub struct Function {
    pub name: String,
    pub instrs: Vec<Instr>,
    /// Label → index of the instruction it marks.
    pub labels: HashMap<String, usize>,
}

/// Splits `nvdisasm -c` output into functions.
pub fn parse(text: &str) -> Vec<Function> {
    let mut out: Vec<Function> = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("//--") {
            if let Some(rest) = t.split(".text.").nth(1) {
                let name = rest.split_whitespace().next().unwrap_or("").to_string();
                out.push(Function { name, ..Function::default() });
                pending.clear();
            }
            continue;
        }
        let Some(f) = out.last_mut() else { continue };
        if let Some(label) = t.strip_suffix(':').filter(|l| l.starts_with(".L_")) {
            pending.push(label.to_string());
            continue;
        }
        let Some(rest) = t.strip_prefix("/*") else { continue };
        let Some((addr, body)) = rest.split_once("*/") else { continue };
        let Ok(addr) = u64::from_str_radix(addr.trim(), 16) else { continue };
        let body = body.trim().trim_end_matches(';').trim();
        let mut words = body.split_whitespace();
        let Some(mut opcode) = words.next() else { continue };
        if opcode.starts_with('@') {
            let Some(op) = words.next() else { continue };
            opcode = op;
        }
        let target = if opcode.starts_with("BRA") {
            body.split("`(").nth(1).and_then(|s| s.split(')').next()).map(str::to_string)
        } else {
            None
        };
        for l in pending.drain(..) {
            f.labels.insert(l, f.instrs.len());
        }
        f.instrs.push(Instr { addr, opcode: opcode.to_string(), target });
    }
    out
}

/// A loop: the instructions from a backward branch's target to the branch, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loop {
    pub start: usize,
    pub end: usize,
}

impl Function {
    /// Every loop closed by a backward branch, innermost (shortest) first. A branch to itself
    /// is not one: ptxas ends every function with `BRA` to its own address after `EXIT`.
    pub fn loops(&self) -> Vec<Loop> {
        let mut v: Vec<Loop> = self
            .instrs
            .iter()
            .enumerate()
            .filter_map(|(i, ins)| {
                let t = *self.labels.get(ins.target.as_ref()?)?;
                (t < i).then_some(Loop { start: t, end: i })
            })
            .collect();
        v.sort_by_key(|l| (l.end - l.start, l.start));
        v.dedup();
        // ptxas moves a wait's retry (an mbarrier try_wait) out of line, after the function's
        // body, with a branch back into the loop that waited: that branch enters a loop from
        // outside (its target inside another loop, itself after that loop's end) and closes no
        // loop of the source. Loops nest; such overlaps are dropped.
        let all = v.clone();
        v.retain(|l| !all.iter().any(|o| o.start < l.start && l.start <= o.end && o.end < l.end));
        v
    }

    /// The steady-state main loop: among the loops with the most tensor-core work, the
    /// innermost; in a kernel without MMA, the innermost of those with the most global
    /// loads (then the most instructions). `None` for straight-line code.
    pub fn main_loop(&self) -> Option<Loop> {
        let loops = self.loops();
        let mixes: Vec<Mix> = loops.iter().map(|l| Mix::of(&self.instrs[l.start..=l.end])).collect();
        // `loops` is innermost first, so the first loop holding the most work is the innermost
        // such; the loops around it hold the same work and more.
        let most_mma = mixes.iter().map(|m| m.mma_equiv).fold(0.0, f64::max);
        if most_mma > 0.0 {
            return loops.iter().zip(&mixes).find(|(_, m)| m.mma_equiv == most_mma).map(|(l, _)| *l);
        }
        let most_loads = mixes.iter().map(Mix::global_loads).max()?;
        loops.iter().zip(&mixes).find(|(_, m)| m.global_loads() == most_loads).map(|(l, _)| *l)
    }
}

/// Instruction counts by class.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mix {
    pub total: u64,
    /// Tensor-core instructions (HMMA, IMMA, HGMMA, …).
    pub mma: u64,
    /// Their work in 16×8×16 MMA-equivalents (m·n·k / 2048), so HGMMA and HMMA compare.
    pub mma_equiv: f64,
    /// Global loads by width: up to 32 bits, 64, 128.
    pub ldg32: u64,
    pub ldg64: u64,
    pub ldg128: u64,
    /// `cp.async` (LDGSTS) and TMA loads (UTMALDG).
    pub ldgsts: u64,
    pub utmaldg: u64,
    pub stg: u64,
    pub lds: u64,
    pub sts: u64,
    /// `ldmatrix`.
    pub ldsm: u64,
    /// Barriers (BAR, and the warpgroup/async-copy waits).
    pub bar: u64,
    /// Conversions (F2F, F2FP, F2I, I2F, I2FP).
    pub cvt: u64,
    /// Integer divides and remainders: ptxas expands each into a sequence that starts with
    /// `I2F.U32.RP` (or `I2F.RP`), counted once per sequence. A loop-invariant divisor's
    /// reciprocal is hoisted out of the loop, leaving a multiply-high in it: not counted there.
    pub idiv: u64,
    pub other: u64,
}

/// Shape `m·n·k` of a tensor-core opcode: `HMMA.16816…` (m16 n8 k16), `HMMA.1688…`,
/// `IMMA.16832…`, `HGMMA.64x128x16…`.
pub fn mma_mnk(opcode: &str) -> Option<(u64, u64, u64)> {
    let shape = opcode.split('.').nth(1)?;
    if shape.contains('x') {
        let d: Vec<u64> = shape.split('x').map(|x| x.parse().ok()).collect::<Option<_>>()?;
        return (d.len() == 3).then(|| (d[0], d[1], d[2]));
    }
    if !shape.bytes().all(|b| b.is_ascii_digit()) || shape.len() < 3 {
        return None;
    }
    // m is 16 (or 8 for the old 884), n one digit, k the rest.
    let (m, rest) = match shape.strip_prefix("16") {
        Some(rest) => (16, rest),
        None => (shape[..1].parse().ok()?, &shape[1..]),
    };
    let n: u64 = rest[..1].parse().ok()?;
    let k: u64 = rest[1..].parse().ok()?;
    Some((m, n, k))
}

impl Mix {
    pub fn of(instrs: &[Instr]) -> Mix {
        let mut m = Mix::default();
        for i in instrs {
            m.add(&i.opcode);
        }
        m
    }

    fn add(&mut self, op: &str) {
        self.total += 1;
        let mut parts = op.split('.');
        let base = parts.next().unwrap_or("");
        let mods: Vec<&str> = parts.collect();
        let has = |m: &str| mods.contains(&m);
        match base {
            "HMMA" | "IMMA" | "HGMMA" | "IGMMA" | "QGMMA" | "DMMA" | "BMMA" => {
                self.mma += 1;
                if let Some((a, b, c)) = mma_mnk(op) {
                    self.mma_equiv += (a * b * c) as f64 / 2048.0;
                }
            }
            "LDG" if has("128") => self.ldg128 += 1,
            "LDG" if has("64") => self.ldg64 += 1,
            "LDG" => self.ldg32 += 1,
            "LDGSTS" => self.ldgsts += 1,
            "UTMALDG" => self.utmaldg += 1,
            "STG" => self.stg += 1,
            "LDS" => self.lds += 1,
            "STS" => self.sts += 1,
            "LDSM" => self.ldsm += 1,
            "BAR" | "WARPGROUP" | "DEPBAR" | "SYNCS" => self.bar += 1,
            "I2F" if has("RP") => {
                self.idiv += 1;
                self.cvt += 1;
            }
            "F2F" | "F2FP" | "F2I" | "I2F" | "I2FP" => self.cvt += 1,
            _ => self.other += 1,
        }
    }

    pub fn global_loads(&self) -> u64 {
        self.ldg32 + self.ldg64 + self.ldg128 + self.ldgsts + self.utmaldg
    }

    /// The headline ratio: instructions that are not MMA per 16×8×16 MMA-equivalent
    /// (`None` without tensor-core work).
    pub fn non_mma_per_mma(&self) -> Option<f64> {
        (self.mma_equiv > 0.0).then(|| (self.total - self.mma) as f64 / self.mma_equiv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SASS: &str = "
//--------------------- .text.k1              --------------------------
        .global         k1
k1:
.text.k1:
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   MOV R2, RZ ;
.L_x_1:
        /*0020*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0030*/                   LDG.E R8, desc[UR4][R2.64] ;
        /*0040*/                   STS.128 [R0], R4 ;
        /*0050*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
.L_x_2:
        /*0060*/                   LDSM.16.M88.4 R12, [R0] ;
        /*0070*/                   HMMA.16816.F32.BF16 R16, R12, R14, R16 ;
        /*0080*/                   HMMA.16816.F32.BF16 R20, R12, R14, R20 ;
        /*0090*/                   I2F.U32.RP R9, R3 ;
        /*00a0*/               @P0 BRA `(.L_x_2) ;
        /*00b0*/              @!P1 BRA `(.L_x_1) ;
        /*00c0*/                   EXIT ;
.L_x_3:
        /*00d0*/                   BRA `(.L_x_3) ;
//--------------------- .text.k2              --------------------------
.text.k2:
        /*0000*/                   HGMMA.64x128x16.F32.BF16 gdesc[UR4], RZ, !UPT ;
        /*0010*/                   EXIT ;
//--------------------- .text.k3              --------------------------
.text.k3:
        /*0000*/                   MOV R0, RZ ;
.L_x_4:
        /*0010*/                   SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [R1+URZ], R0 ;
        /*0020*/              @!P0 BRA `(.L_x_5) ;
.L_x_6:
        /*0030*/                   HGMMA.64x256x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0040*/               @P1 BRA `(.L_x_4) ;
        /*0050*/                   HGMMA.64x256x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0060*/                   EXIT ;
.L_x_5:
        /*0070*/                   SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [R1+URZ], R0 ;
        /*0080*/              @!P0 BRA `(.L_x_5) ;
        /*0090*/                   BRA `(.L_x_6) ;
";

    #[test]
    fn functions_labels_and_loops() {
        let f = parse(SASS);
        assert_eq!(f.len(), 3);
        assert_eq!((f[0].name.as_str(), f[0].instrs.len(), f[1].name.as_str()), ("k1", 14, "k2"));
        assert_eq!(f[0].instrs[10].target.as_deref(), Some(".L_x_2"));
        assert_eq!(f[0].loops(), vec![Loop { start: 6, end: 10 }, Loop { start: 2, end: 11 }]);
        // The inner loop holds the MMAs: it is the main loop although the outer one has them too.
        assert_eq!(f[0].main_loop(), Some(Loop { start: 6, end: 10 }));
        let m = Mix::of(&f[0].instrs[6..=10]);
        assert_eq!((m.total, m.mma, m.ldsm, m.idiv, m.cvt, m.other), (5, 2, 1, 1, 1, 1));
        assert_eq!(m.mma_equiv, 2.0);
        assert_eq!(m.non_mma_per_mma(), Some(1.5));
        let outer = Mix::of(&f[0].instrs[2..=11]);
        assert_eq!((outer.ldg128, outer.ldg32, outer.sts, outer.bar), (1, 1, 1, 1));
        assert!(f[1].loops().is_empty() && f[1].main_loop().is_none());
        assert_eq!(Mix::of(&f[1].instrs).mma_equiv, 64.0);
        // A wait's out-of-line retry branches back into the loop (to 3, from 9): no loop of its
        // own, although the span would hold more MMA work (the HGMMA after the loop) than the loop.
        assert_eq!(f[2].loops(), vec![Loop { start: 7, end: 8 }, Loop { start: 1, end: 4 }]);
        assert_eq!(f[2].main_loop(), Some(Loop { start: 1, end: 4 }));
    }

    #[test]
    fn mma_shapes() {
        assert_eq!(mma_mnk("HMMA.16816.F32.BF16"), Some((16, 8, 16)));
        assert_eq!(mma_mnk("HMMA.1688.F32.TF32"), Some((16, 8, 8)));
        assert_eq!(mma_mnk("IMMA.16832.S32.S8.S8"), Some((16, 8, 32)));
        assert_eq!(mma_mnk("HGMMA.64x128x16.F32.BF16"), Some((64, 128, 16)));
        assert_eq!(mma_mnk("HMMA.884.F32"), Some((8, 8, 4)));
        assert_eq!(mma_mnk("HMMA"), None);
    }
}
