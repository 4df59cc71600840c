//! With the `cuda-emu` feature: compiles every `kernels/*.cu` with the host C++ compiler, twice
//! (plain, and instrumented for the race checker), together with the emulation runtime.

fn main() {
    println!("cargo:rerun-if-changed=../../kernels");
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda-emu")]
    emu::build();
}

#[cfg(feature = "cuda-emu")]
mod emu {
    use std::path::{Path, PathBuf};

    /// One translation unit per variant: the kernels inside a namespace of their own, so the
    /// plain and the instrumented copies of inline functions and templates never merge.
    fn unit(out: &Path, kernels: &[PathBuf], variant: u32) -> PathBuf {
        let mut s = String::from("#include \"emu/kiln_emu.h\"\n");
        s += &format!("extern \"C\" {{ int kiln_emu_anchor_{variant} = 1; }}\nnamespace kiln_emu_v{variant} {{\n");
        s += "#include \"common.cuh\"\n";
        for k in kernels {
            s += &format!("#include \"{}\"\n", k.display());
        }
        s += "}\n";
        let path = out.join(format!("kernels_v{variant}.cpp"));
        std::fs::write(&path, s).expect("write the generated kernel unit");
        path
    }

    fn base(kdir: &Path) -> cc::Build {
        let mut b = cc::Build::new();
        b.cpp(true).std("c++20").include(kdir).warnings(true).extra_warnings(true);
        // Parameter structs holding a TMA tensor map are 64-byte aligned; GCC notes that such
        // by-value parameters changed ABI in GCC 4.6, which concerns no code here (every call
        // is inside this one build).
        b.flag_if_supported("-Wno-psabi");
        b
    }

    pub fn build() {
        let kdir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels").canonicalize().expect("kernels/");
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
        let mut kernels: Vec<PathBuf> = std::fs::read_dir(&kdir)
            .expect("read kernels/")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cu"))
            .collect();
        kernels.sort();
        // The deliberately broken kernels of the harness's own tests (emulation only).
        kernels.push(kdir.join("emu/broken.cu"));
        // The profiler's calibration kernels (emulation only).
        kernels.push(kdir.join("emu/calibrate.cu"));
        let plain = unit(&out, &kernels, 0);
        let checked = unit(&out, &kernels, 1);
        // The race-check build: GCC/Clang's thread-sanitizer instrumentation calls a hook on every
        // load and store; the hooks are kiln's own (kernels/emu/rt.cpp), no sanitizer runtime.
        let rc_objs = base(&kdir)
            .define("KILN_EMU_VARIANT", "1")
            .flag("-fsanitize=thread")
            .file(&checked)
            .compile_intermediates();
        let mut lib = base(&kdir);
        lib.define("KILN_EMU_VARIANT", "0").file(kdir.join("emu/rt.cpp")).file(kdir.join("emu/prof.cpp")).file(&plain);
        for o in rc_objs {
            lib.object(o);
        }
        lib.compile("kiln_emu");
    }
}
