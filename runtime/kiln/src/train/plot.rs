//! `OUT/loss.svg`: train and eval loss against step, drawn as plain SVG (no plotting crate).

use std::fmt::Write;

/// An SVG line chart of `train` and `eval` `(step, loss)` points.
pub fn loss_svg(train: &[(usize, f64)], eval: &[(usize, f64)]) -> String {
    loss_svg_with(train, eval, &[])
}

/// As [`loss_svg`], plus held-out reward accuracy `(step, 0..1)` on a right-hand axis
/// (preference runs; nothing drawn when empty).
pub fn loss_svg_with(train: &[(usize, f64)], eval: &[(usize, f64)], accuracy: &[(usize, f64)]) -> String {
    let (w, h, ml, mr, mt, mb) = (640.0, 360.0, 60.0, 20.0, 30.0, 40.0);
    let pts = train.iter().chain(eval).filter(|p| p.1.is_finite());
    let (mut x1, mut y0, mut y1) = (1usize, f64::INFINITY, f64::NEG_INFINITY);
    for &(s, l) in pts {
        x1 = x1.max(s);
        y0 = y0.min(l);
        y1 = y1.max(l);
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    (y0, y1) = ((y0 - pad).max(0.0), y1 + pad);
    let sx = |s: usize| ml + (w - ml - mr) * s as f64 / x1 as f64;
    let sy = |l: f64| mt + (h - mt - mb) * (1.0 - (l - y0) / (y1 - y0));
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<line x1="{ml}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">step</text>
<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">loss</text>
"##,
        h - mb,
        w - mr,
        h - mb,
        h - mb,
        (w + ml) / 2.0,
        h - 8.0,
        h / 2.0,
        h / 2.0
    );
    for i in 0..=4 {
        let l = y0 + (y1 - y0) * i as f64 / 4.0;
        let _ = writeln!(out, r#"<text x="{}" y="{:.1}" text-anchor="end">{l:.3}</text>"#, ml - 4.0, sy(l) + 4.0);
        let s = x1 * i / 4;
        let _ = writeln!(out, r#"<text x="{:.1}" y="{}" text-anchor="middle">{s}</text>"#, sx(s), h - mb + 16.0);
    }
    for (pts, color, name, y) in [(train, "#1f77b4", "train", mt - 12.0), (eval, "#d62728", "eval", mt - 12.0)] {
        let path: Vec<String> =
            pts.iter().filter(|p| p.1.is_finite()).map(|&(s, l)| format!("{:.1},{:.1}", sx(s), sy(l))).collect();
        if path.is_empty() {
            continue;
        }
        let _ =
            writeln!(out, r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#, path.join(" "));
        if name == "eval" {
            for p in &path {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(out, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
            }
        }
        let lx = if name == "train" { ml + 10.0 } else { ml + 80.0 };
        let _ = writeln!(out, r#"<text x="{lx}" y="{y}" fill="{color}">{name} loss</text>"#);
    }
    let acc: Vec<String> = accuracy
        .iter()
        .filter(|p| p.1.is_finite())
        .map(|&(st, a)| format!("{:.1},{:.1}", sx(st), mt + (h - mt - mb) * (1.0 - a.clamp(0.0, 1.0))))
        .collect();
    if !acc.is_empty() {
        let color = "#2ca02c";
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" stroke-dasharray="5,3" points="{}"/>"#,
            acc.join(" ")
        );
        for (i, a) in ["0%", "50%", "100%"].iter().enumerate() {
            let y = mt + (h - mt - mb) * (1.0 - i as f64 / 2.0);
            let _ = writeln!(out, r#"<text x="{}" y="{:.1}" fill="{color}">{a}</text>"#, w - mr - 30.0, y + 4.0);
        }
        let _ =
            writeln!(out, r#"<text x="{}" y="{}" fill="{color}">eval reward accuracy</text>"#, ml + 160.0, mt - 12.0);
    }
    out.push_str("</svg>\n");
    out
}
