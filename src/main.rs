//! The `pmtr` command line: parse, then call into the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use pmtr::app::{self, control, tools};
use pmtr::config::{self, Parity};
use pmtr::control::Request;
use pmtr::meter::Model;
use pmtr::relay::Level;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "pmtr", version, about = "Metering gateway: PZEM and RX380 meters over Modbus RTU")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (what systemd starts).
    Run {
        #[arg(long, short, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// The whole gateway on simulated meters: no hardware, no database.
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
        /// The log and one line per reading instead of the live table.
        #[arg(long)]
        log: bool,
        /// Do not open the live page in a browser.
        #[arg(long)]
        no_open: bool,
    },
    /// Check a configuration file and report every error in it.
    CheckConfig { file: PathBuf },
    /// Find devices on serial ports: ports × addresses × line settings.
    Scan {
        /// Port paths or patterns (repeat or separate with commas).
        #[arg(long, value_delimiter = ',', default_value = "/dev/ttyUSB*,/dev/ttyACM*")]
        ports: Vec<String>,
        /// Addresses, e.g. "1-247" or "4,5,6".
        #[arg(long, default_value = "1-247", value_parser = pmtr::bus::scan::parse_addresses)]
        addresses: std::vec::Vec<u8>,
        /// Baud rates to try (default: 9600 and the meter definitions' own, see the README).
        #[arg(long, value_delimiter = ',')]
        baud: Vec<u32>,
        /// Parities to try (none, even, odd; default: as --baud).
        #[arg(long, value_delimiter = ',', value_parser = tools::parse_parity)]
        parity: Vec<Parity>,
        /// How long to wait at each address.
        #[arg(long, default_value = "100ms", value_parser = app::parse_duration_arg)]
        timeout: Duration,
        /// The folder of user meter definitions (their probes recognise models too).
        #[arg(long, default_value = "/etc/pmtr/meters.d")]
        meters_dir: PathBuf,
        /// Add the devices found with one model, not yet configured, to this configuration file
        /// (checked first).
        #[arg(long, requires = "bus", value_name = "FILE")]
        add_to: Option<PathBuf>,
        /// The bus of --add-to.
        #[arg(long)]
        bus: Option<String>,
        /// Scan the units behind a Modbus TCP device or gateway (HOST:PORT) instead of ports.
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "rtu_over_tcp")]
        tcp: Option<String>,
        /// Scan the meters behind a converter passing RTU frames over TCP (HOST:PORT); --baud
        /// and --parity are its serial side.
        #[arg(long, value_name = "HOST:PORT")]
        rtu_over_tcp: Option<String>,
    },
    /// One reading of a configured meter, or of the meter at --port/--address.
    Read {
        /// Meter name from the configuration.
        meter: Option<String>,
        #[arg(long, short, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[arg(long, conflicts_with_all = ["meter", "tcp", "rtu_over_tcp"], requires = "address")]
        port: Option<String>,
        /// A Modbus TCP device or gateway (HOST:PORT); the meter is --unit (or --address).
        #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["meter", "rtu_over_tcp"], requires = "address")]
        tcp: Option<String>,
        /// A converter passing RTU frames over TCP (HOST:PORT); --baud and --parity are its
        /// serial side.
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "meter", requires = "address")]
        rtu_over_tcp: Option<String>,
        /// The slave address, or a Modbus TCP unit id (--unit).
        #[arg(long, visible_alias = "unit")]
        address: Option<u8>,
        /// A model (pzem-016, rx380, pmtr-srv) or a meter definition (`pmtr meters list`).
        #[arg(long, default_value = "pzem-016")]
        model: String,
        /// The folder of user meter definitions.
        #[arg(long, default_value = "/etc/pmtr/meters.d")]
        meters_dir: PathBuf,
        #[arg(long)]
        baud: Option<u32>,
        #[arg(long, value_parser = tools::parse_parity)]
        parity: Option<Parity>,
        #[arg(long, default_value = config::DEFAULT_BUS_TIMEOUT_TEXT, value_parser = app::parse_duration_arg)]
        timeout: Duration,
        /// Print the reading as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Meter definitions: the built-in library and the user files.
    Meters {
        #[command(subcommand)]
        cmd: MetersCmd,
    },
    /// PZEM set-up commands (one device on the line for set-address).
    Pzem {
        #[command(subcommand)]
        cmd: PzemCmd,
    },
    /// PMTR_001_SRV servers behind a power-line modem: find them, set their clocks, push their
    /// relay actions (with the daemon stopped; it does the last two by itself).
    Pmtr {
        #[command(subcommand)]
        cmd: PmtrCmd,
    },
    /// Simulated meters on a pseudo-terminal, for tests and trying pmtr without hardware.
    Simulate {
        /// Create this symlink to the pseudo-terminal (e.g. /tmp/pmtr/ttyUSB0).
        #[arg(long)]
        link: Option<PathBuf>,
        #[arg(long, default_value_t = 9600)]
        baud: u32,
        /// The slave's reply delay.
        #[arg(long, default_value = "5ms", value_parser = app::parse_duration_arg)]
        turnaround: Duration,
        /// The folder of user meter definitions (their names may be simulated).
        #[arg(long, default_value = "/etc/pmtr/meters.d")]
        meters_dir: PathBuf,
        /// MODEL@ADDRESS[,key=value...], e.g. pzem-016@4, sdm630@3 or rx380@1,fault=bad-crc,every=3.
        #[arg(required = true)]
        meters: Vec<String>,
    },
    /// Send one test mail with [alerts.email] and report each step (DNS, connect, TLS, AUTH,
    /// message). Exit status 0 only when the server accepted it.
    TestEmail {
        #[arg(long, short, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Send to this address instead of the configured `to` (repeat for several).
        #[arg(long, value_name = "ADDR")]
        to: Vec<String>,
    },
    /// The running daemon at a glance: meters and their latest readings, bus counters, relays,
    /// triggers, sinks and spools, MQTT (from its status API).
    Status {
        /// The configuration whose `[status]` (address and token) to use.
        #[arg(long, short, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The status API's URL, e.g. http://127.0.0.1:9780 or https://pi.lan:9780 (wins over
        /// --config).
        #[arg(long)]
        url: Option<String>,
        /// For an https URL: a PEM file of the certificate (or of the CA that signed it) to
        /// trust, besides the public CAs. With --config and `tls_cert`, that file by default.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Print the whole status as JSON.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Keep asking: a live table of meters, relays, triggers and the last minute's events
        /// (redrawn in place on a terminal, repeated blocks on a pipe) until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// How often --watch asks.
        #[arg(long, default_value = "2s", value_parser = app::parse_duration_arg, requires = "watch")]
        interval: Duration,
    },
    /// The relays of the running daemon: list them, force one by hand, release it.
    Relay {
        #[command(subcommand)]
        cmd: RelayCmd,
    },
    /// The triggers of the running daemon: list them, reset a latched one.
    Trigger {
        #[command(subcommand)]
        cmd: TriggerCmd,
    },
    /// Energy per meter: lifetime totals, today, yesterday, this week, this month, last month,
    /// this year, and their cost per tariff (from the books the daemon saves every minute).
    Energy {
        #[command(subcommand)]
        cmd: Option<EnergyCmd>,
        #[arg(long, short, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum EnergyCmd {
    /// Align a lifetime total with the utility meter's display: `pmtr energy set main 12345.6`
    /// or `pmtr energy set main l2_energy 4321` (logged; through the daemon when it runs).
    Set {
        meter: String,
        /// [COUNTER] VALUE: the counter (`l1_energy`, `total_energy`) may be left out when the
        /// meter has one; the value in kWh.
        #[arg(num_args = 1..=2, required = true, value_name = "[COUNTER] VALUE")]
        args: Vec<String>,
        #[arg(long, short, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

/// Where the running daemon listens.
#[derive(clap::Args)]
struct Daemon {
    /// The configuration whose `gateway.control_socket` to use.
    #[arg(long, short, default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// The daemon's control socket (wins over --config).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

#[derive(Subcommand)]
enum RelayCmd {
    /// Every relay: pin, level, default, force, the triggers holding it.
    List {
        #[command(flatten)]
        daemon: Daemon,
        /// Print the relays as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Force a relay on or off whatever its triggers say (until released, or for a while).
    Force {
        /// The relay's name from the configuration.
        name: String,
        /// on or off.
        #[arg(value_parser = parse_level)]
        level: Level,
        /// Release the force by itself after this long (e.g. 30m, 2h).
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_force_duration)]
        duration: Option<Duration>,
        #[command(flatten)]
        daemon: Daemon,
    },
    /// Release a force: the relay's triggers decide again.
    Release {
        name: String,
        #[command(flatten)]
        daemon: Daemon,
    },
}

#[derive(Subcommand)]
enum TriggerCmd {
    /// Every trigger: state, since when, stale, dry run, the values it last saw.
    List {
        #[command(flatten)]
        daemon: Daemon,
        /// Print the triggers as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reset a latched trigger.
    Reset {
        name: String,
        #[command(flatten)]
        daemon: Daemon,
    },
}

#[derive(Subcommand)]
enum PzemCmd {
    /// Give a PZEM a new slave address (only one PZEM on the line when using 0xF8).
    SetAddress {
        #[arg(long)]
        port: String,
        /// Its current address (default 248 = 0xF8, the general address).
        #[arg(long, default_value_t = 0xF8)]
        address: u8,
        new: u8,
    },
    /// Reset a PZEM's energy counter to zero.
    ResetEnergy {
        #[arg(long)]
        port: String,
        #[arg(long)]
        address: u8,
    },
    /// Read, or set, the over-power alarm threshold in watts.
    AlarmThreshold {
        #[arg(long)]
        port: String,
        #[arg(long)]
        address: u8,
        watts: Option<u16>,
    },
}

#[derive(Subcommand)]
enum PmtrCmd {
    /// Find the servers on a power-line bus (9600 8N1), resynchronising the bus after every
    /// silent address so that none is missed.
    Scan {
        #[arg(long)]
        port: String,
        /// Addresses, e.g. "1-247" or "1-32".
        #[arg(long, default_value = "1-247", value_parser = pmtr::bus::scan::parse_addresses)]
        addresses: std::vec::Vec<u8>,
        /// How long to wait at each address (a server answers once per loop, about 1.2 s).
        #[arg(long, default_value = "5s", value_parser = app::parse_duration_arg)]
        timeout: Duration,
        /// Add the servers not yet configured to this configuration file (checked first).
        #[arg(long, requires = "bus", value_name = "FILE")]
        add_to: Option<PathBuf>,
        /// The power-line bus of --add-to.
        #[arg(long)]
        bus: Option<String>,
    },
    /// Set the clock of the configured servers (all, or those named).
    SyncTime {
        #[arg(long, short, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        servers: Vec<String>,
    },
    /// Push the relay actions of the configured servers (all, or those named): five slots each.
    PushActions {
        #[arg(long, short, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        servers: Vec<String>,
    },
}

#[derive(Subcommand)]
enum MetersCmd {
    /// The built-in definitions and the user files (a user file overrides a built-in).
    List {
        #[arg(long, default_value = "/etc/pmtr/meters.d")]
        dir: PathBuf,
    },
    /// A definition's register table and the requests a poll sends.
    Show {
        name: String,
        #[arg(long, default_value = "/etc/pmtr/meters.d")]
        dir: PathBuf,
    },
    /// Check definition files and report every error in them.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn parse_level(s: &str) -> Result<Level, String> {
    Level::parse(s).ok_or_else(|| format!("`{s}`: say on or off"))
}

fn parse_force_duration(s: &str) -> Result<Duration, String> {
    let d = app::parse_duration_arg(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("`{s}`: a force lasts at least 1s"));
    }
    Ok(d)
}

/// A failure already told on stderr: exit with its code, say nothing more.
#[derive(Debug)]
struct Told(ExitCode);

impl std::fmt::Display for Told {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(reported above)")
    }
}

impl std::error::Error for Told {}

/// The control socket: --socket, or the configuration's.
fn socket_of(daemon: Daemon) -> anyhow::Result<PathBuf> {
    if let Some(socket) = daemon.socket {
        return Ok(socket);
    }
    let cfg = load(&daemon.config)?;
    Ok(cfg.gateway.control_socket)
}

/// Runs one control command: Err is the message for stderr, and exit status 1.
async fn ask_daemon(
    daemon: Daemon,
    ask: impl AsyncFnOnce(&std::path::Path) -> Result<(), String>,
) -> anyhow::Result<ExitCode> {
    let socket = socket_of(daemon).inspect_err(|_| {
        eprintln!("(or give the daemon's control socket with --socket PATH)");
    })?;
    Ok(said(ask(&socket).await))
}

/// Success, or the message on stderr and exit status 1.
fn said(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

/// The configuration at `path`, or every error in it on stderr (exit status 1).
fn load(path: &std::path::Path) -> anyhow::Result<config::Config> {
    config::load_file(path).map_err(|errors| {
        eprintln!("{errors}");
        eprintln!("{} error(s) in {}", errors.0.len(), path.display());
        Told(ExitCode::from(1)).into()
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A closed stdout (`pmtr read mainA | head -1`) ends the one-shot commands the Unix way,
    // as `seq 1000000 | head` ends: killed by SIGPIPE, silently, status 141 in the shell.
    // Rust starts with SIGPIPE ignored, which turns that into a panic in `println!`, so the
    // default comes back here, before any thread, for every command but the long-running
    // ones: `run` (a gone reader of its stdout or stderr, a pipe or journald, must never kill
    // the daemon), `demo` (stops by itself as at Ctrl-C, cleaning up, status 0) and `simulate`
    // (goes on simulating).
    if !matches!(cli.cmd, Cmd::Run { .. } | Cmd::Demo { .. } | Cmd::Simulate { .. }) {
        use nix::sys::signal::{signal, SigHandler, Signal};
        // SAFETY: no other thread runs yet, and SIG_DFL installs no handler code.
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    }
    app::init_logging(log_level(&cli.cmd));
    let rt = match runtime_for(&cli.cmd).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(command(cli.cmd)) {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<Told>() {
            Some(Told(code)) => *code,
            None => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

/// What is logged: the daemon and the demo say what they do; the tools only warn.
fn log_level(cmd: &Cmd) -> &'static str {
    match cmd {
        // The live table owns the terminal: the log would scroll it away (--log shows it).
        Cmd::Demo { log, .. } if app::demo::Output::choose(*log) == app::demo::Output::Table => "off",
        Cmd::Run { .. } | Cmd::Demo { .. } | Cmd::Simulate { .. } => "info",
        // A meter read in smaller blocks after refusing one is worth telling.
        Cmd::Read { .. } => "info",
        _ => "warn",
    }
}

/// The daemon waits on serial ports nearly all the time: one thread serves every port and
/// costs the fewest wake-ups. The one-shot tools and the demo use two.
fn runtime_for(cmd: &Cmd) -> tokio::runtime::Builder {
    match cmd {
        Cmd::Run { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
    }
}

/// Runs the command; its exit status.
async fn command(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Run { config } => {
            let cfg = load(&config)?;
            let signals = app::signals().context("cannot listen for signals")?;
            let service = app::run::Service::from_env(config);
            app::run::serve(service, cfg, None, signals).await?;
        }
        Cmd::Demo { seconds, log, no_open } => {
            let opts = app::demo::DemoOptions {
                duration: seconds.map(Duration::from_secs),
                output: app::demo::Output::choose(log),
                open: !no_open,
            };
            app::demo::run(opts).await?
        }
        Cmd::CheckConfig { file } => {
            let cfg = load(&file)?;
            println!(
                "{}: ok ({} bus(es), {} meter(s), {} relay(s), {} trigger(s))",
                file.display(),
                cfg.buses.len(),
                cfg.meters.len(),
                cfg.relays.len(),
                cfg.triggers.len()
            );
        }
        Cmd::Scan { ports, addresses, baud, parity, timeout, tcp, rtu_over_tcp, meters_dir, add_to, bus } => {
            // Behind a network device the line settings only time the frames: the first given.
            let (b, p) =
                (baud.first().copied().unwrap_or(9600), parity.first().copied().unwrap_or(Parity::None));
            let found = match (tcp, rtu_over_tcp) {
                (Some(host), _) => {
                    tools::run_network_scan(
                        config::BusKind::Tcp,
                        &host,
                        addresses,
                        b,
                        p,
                        timeout,
                        &meters_dir,
                    )
                    .await?
                }
                (None, Some(host)) => {
                    let kind = config::BusKind::RtuOverTcp;
                    tools::run_network_scan(kind, &host, addresses, b, p, timeout, &meters_dir).await?
                }
                (None, None) => tools::run_scan(ports, addresses, baud, parity, timeout, &meters_dir).await?,
            };
            if let (Some(file), Some(bus)) = (add_to, bus) {
                let added = tools::add_found(&file, &bus, &found)?;
                println!("{added} device(s) added to {} on bus {bus:?}", file.display());
            }
        }
        Cmd::Read {
            meter,
            config,
            port,
            tcp,
            rtu_over_tcp,
            address,
            model,
            meters_dir,
            baud,
            parity,
            timeout,
            json,
        } => {
            // A model named on the command line may be a meter definition: read by it.
            let model = tools::choose_model(&model, &meters_dir)?;
            let wire = Wire { port, tcp, rtu_over_tcp, address, model, baud, parity, timeout };
            let target = read_target(meter, &config, wire)?;
            let reading = tools::run_read(target).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reading)?);
            } else {
                tools::print_reading(&reading);
            }
        }
        Cmd::Meters { cmd } => match cmd {
            MetersCmd::List { dir } => return Ok(tools::meters_list(&dir)),
            MetersCmd::Show { name, dir } => tools::meters_show(&name, &dir)?,
            MetersCmd::Check { files } => return Ok(tools::meters_check(&files)),
        },
        Cmd::Pzem { cmd } => {
            let t = config::DEFAULT_BUS_TIMEOUT;
            match cmd {
                PzemCmd::SetAddress { port, address, new } => {
                    tools::pzem_set_address(&port, address, new, t).await?
                }
                PzemCmd::ResetEnergy { port, address } => tools::pzem_reset_energy(&port, address, t).await?,
                PzemCmd::AlarmThreshold { port, address, watts } => {
                    tools::pzem_alarm_threshold(&port, address, watts, t).await.map(|_| ())?
                }
            }
        }
        Cmd::Pmtr { cmd } => match cmd {
            PmtrCmd::Scan { port, addresses, timeout, add_to, bus } => {
                let add = add_to.as_deref().zip(bus.as_deref());
                app::servers::run_scan(&port, addresses, timeout, add).await?;
            }
            PmtrCmd::SyncTime { config, servers } => {
                let cfg = load(&config)?;
                app::servers::refuse_if_daemon_runs(&cfg).await?;
                app::servers::run_sync_time(&cfg, &servers).await?;
            }
            PmtrCmd::PushActions { config, servers } => {
                let cfg = load(&config)?;
                app::servers::refuse_if_daemon_runs(&cfg).await?;
                app::servers::run_push_actions(&cfg, &servers).await?;
            }
        },
        Cmd::Simulate { link, baud, turnaround, meters_dir, meters } => {
            // User meter definitions can be simulated by name; a file that does not load is
            // said, and the others are served.
            for e in pmtr::sim::SimMeterSpec::use_definitions(&meters_dir) {
                eprintln!("warning: meter definition not loaded: {e}");
            }
            app::demo::simulate(link, baud, turnaround, meters).await?;
        }
        Cmd::TestEmail { config, to } => {
            let cfg = load(&config)?;
            let accepted = app::test_email::test_email(&cfg, &to, &mut std::io::stdout()).await?;
            return Ok(if accepted { ExitCode::SUCCESS } else { ExitCode::from(1) });
        }
        Cmd::Status { config, url, ca, json, watch, interval } => {
            return status(config, url, ca, json, watch, interval).await;
        }
        Cmd::Relay { cmd } => return relay(cmd).await,
        Cmd::Energy { cmd, config, json } => return energy(cmd, config, json).await,
        Cmd::Trigger { cmd } => return trigger(cmd).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// `pmtr read` without a configured meter: where and how to ask.
struct Wire {
    port: Option<String>,
    tcp: Option<String>,
    rtu_over_tcp: Option<String>,
    address: Option<u8>,
    model: Model,
    baud: Option<u32>,
    parity: Option<Parity>,
    timeout: Duration,
}

/// Where `pmtr read` asks: a serial port, a Modbus TCP host or an RTU-over-TCP converter.
fn wire_port(
    port: Option<String>,
    tcp: Option<String>,
    rtu_over_tcp: Option<String>,
) -> (config::BusKind, Option<String>) {
    match (port, tcp, rtu_over_tcp) {
        (_, Some(host), _) => (config::BusKind::Tcp, Some(host)),
        (_, _, Some(host)) => (config::BusKind::RtuOverTcp, Some(host)),
        (port, None, None) => (config::BusKind::Rs485, port),
    }
}

/// What `pmtr read` reads: a configured meter by name, or one on a port (or a host) given.
fn read_target(
    meter: Option<String>,
    config: &std::path::Path,
    wire: Wire,
) -> anyhow::Result<tools::ReadTarget> {
    let Wire { port, tcp, rtu_over_tcp, address, model, baud, parity, timeout } = wire;
    let (kind, port) = wire_port(port, tcp, rtu_over_tcp);
    match (meter, port, address) {
        (Some(name), _, _) => Ok(tools::ReadTarget::from_config(&load(config)?, &name)?),
        (None, Some(port), Some(address)) => {
            let (b, p) = model.default_line();
            let line = config::LineSettings::eight_bits(
                baud.unwrap_or(b),
                parity.unwrap_or(match p {
                    'E' => Parity::Even,
                    'O' => Parity::Odd,
                    _ => Parity::None,
                }),
            );
            if kind.is_network() {
                config::check_host(&port).map_err(anyhow::Error::msg)?;
            }
            Ok(tools::ReadTarget {
                ports: vec![port],
                line,
                meter: tools::adhoc_meter(model, address),
                timeout,
                retries: config::DEFAULT_BUS_RETRIES,
                kind,
            })
        }
        _ => anyhow::bail!(
            "name a configured meter, or give --port (or --tcp, --rtu-over-tcp) and --address (or --unit)"
        ),
    }
}

/// `pmtr relay …`: asks the daemon over its control socket.
async fn relay(cmd: RelayCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        RelayCmd::List { daemon, json } => {
            ask_daemon(daemon, async |s| control::list(s, control::List::Relays, json).await).await
        }
        RelayCmd::Force { name, level, duration, daemon } => {
            let seconds = duration.map(|d| d.as_secs_f64().ceil() as u64);
            let request = Request::Force { relay: name, level, seconds };
            ask_daemon(daemon, async |s| control::act(s, &request).await).await
        }
        RelayCmd::Release { name, daemon } => {
            let request = Request::Release { relay: name };
            ask_daemon(daemon, async |s| control::act(s, &request).await).await
        }
    }
}

/// `pmtr trigger …`: asks the daemon over its control socket.
async fn trigger(cmd: TriggerCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TriggerCmd::List { daemon, json } => {
            ask_daemon(daemon, async |s| control::list(s, control::List::Triggers, json).await).await
        }
        TriggerCmd::Reset { name, daemon } => {
            let request = Request::Reset { trigger: name };
            ask_daemon(daemon, async |s| control::act(s, &request).await).await
        }
    }
}

/// `pmtr status`: the daemon's status API, at --url or where the configuration says.
async fn status(
    config: PathBuf,
    url: Option<String>,
    ca: Option<PathBuf>,
    json: bool,
    watch: bool,
    interval: Duration,
) -> anyhow::Result<ExitCode> {
    let (url, token, ca) = match url {
        Some(u) => (u, None, ca),
        None => {
            let c = load(&config).inspect_err(|_| {
                eprintln!("(or give the daemon's status API with --url http://127.0.0.1:9780)");
            })?;
            if !c.status.enabled {
                eprintln!("error: the status API is off in {} ([status] enabled = false)", config.display());
                return Ok(ExitCode::from(1));
            }
            let tls = c.status.tls.as_ref();
            let url = app::status::url_for(c.status.listen, tls.is_some());
            let token = c.status.token.map(|t| t.expose().to_owned());
            (url, token, ca.or_else(|| tls.map(|t| t.cert.clone())))
        }
    };
    let shown = if watch {
        app::status::watch(&url, token.as_deref(), ca.as_deref(), interval.max(Duration::from_millis(100)))
            .await
    } else {
        app::status::show(&url, token.as_deref(), ca.as_deref(), json).await
    };
    Ok(said(shown))
}

/// `pmtr energy [set METER [COUNTER] VALUE]`.
async fn energy(cmd: Option<EnergyCmd>, config: PathBuf, json: bool) -> anyhow::Result<ExitCode> {
    let (config, set) = match cmd {
        None => (config, None),
        Some(EnergyCmd::Set { meter, args, config }) => (config, Some((meter, args))),
    };
    let c = load(&config)?;
    let result = match set {
        None => app::energy::show(&c, json),
        Some((meter, args)) => {
            let (counter, value) = match args.as_slice() {
                [v] => (None, v.as_str()),
                [c, v] => (Some(c.as_str()), v.as_str()),
                _ => (None, ""),
            };
            match value.parse::<f64>() {
                Ok(v) => app::energy::set(&c, &meter, counter, v).await,
                Err(_) => {
                    Err(format!("{value:?} is not a number of kWh: pmtr energy set METER [COUNTER] VALUE"))
                }
            }
        }
    };
    Ok(said(result))
}
