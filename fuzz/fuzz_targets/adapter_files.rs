//! Arbitrary bytes as a PEFT adapter folder: the text before the first NUL byte is
//! `adapter_config.json`, the rest `adapter_model.safetensors`. The config and the safetensors
//! header must be checked against each other and a small model without a panic, and an
//! accepted adapter's tensors must have exactly the shapes its config claims.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let Ok(text) = std::str::from_utf8(&data[..split]) else { return };
    let st = data.get(split + 1..).unwrap_or(&[]);
    let cp = std::path::Path::new("adapter_config.json");
    let file = std::path::Path::new("adapter_model.safetensors");
    let Ok(config) = kiln::adapters::lora::parse_adapter_config(text, cp) else { return };
    let Ok(index) = kiln::formats::safetensors::index_safetensors(st, file) else { return };
    let model = serde_json::json!({"model_type": "llama", "vocab_size": 16, "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1});
    let model = kiln::model::ModelConfig::from_json(&model, std::path::Path::new("config.json")).unwrap();
    let shapes: Vec<(String, Vec<usize>)> = index.into_iter().map(|(n, _, s, _)| (n, s)).collect();
    if kiln::adapters::lora::check_peft_tensors(&shapes, file, cp, &config, &model).is_ok() {
        for (name, shape) in &shapes {
            if name.contains(".lora_A.") {
                assert_eq!(shape[0], config.r, "{name}");
            } else if name.contains(".lora_B.") {
                assert_eq!(shape[1], config.r, "{name}");
            }
        }
    }
});
