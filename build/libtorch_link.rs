// Shared by the build scripts of every package that links libtorch (included with
// `include!`): bake an rpath to the libtorch that torch-sys linked against, so binaries
// run without LD_LIBRARY_PATH, and tell the code where that libtorch lives so that the
// CUDA backend (libtorch_cuda.so) can be loaded on demand. It is deliberately not linked:
// linking it loads every CUDA library (cuBLAS, cuDNN, NCCL, ...) at start-up, which costs
// time and hundreds of MB on every `sspo-run sql` or `status`, GPU or not.
fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    println!("cargo:rustc-env=SSPO_LIBTORCH_LIB={lib_dir}");
}
