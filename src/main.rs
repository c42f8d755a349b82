fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let a: Vec<String> = std::env::args().collect();
    let get = |f: &str| a.iter().position(|x| x == f).map(|i| a[i + 1].clone());
    let o = ferromq::config::Overrides {
        data_dir: get("--data-dir").map(Into::into),
        listen: get("--listen"),
        namesrv_listen: get("--namesrv-listen"),
        flush: get("--flush").map(|f| f.parse().unwrap()),
        ..Default::default()
    };
    let cfg = match ferromq::config::Config::load(None, &o) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2)
        }
    };
    if let Err(e) = ferromq::broker::run(cfg) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
