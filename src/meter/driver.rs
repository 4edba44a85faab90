//! A model's driver: all the bus engine asks of a meter, so that the port loop schedules and
//! moves bytes and knows no model.
//!
//! - [`Reader`] is pure: the requests of a [`Plan`], their decoding, and the plan to fall back
//!   to after an exception (one rule for every model: a meter that refuses a block with
//!   exception 02 or 03 is read in smaller blocks from then on, while its model has them).
//!   Every meter but a PMTR_001_SRV is read by a definition ([`definition::read_by`]: the
//!   PZEMs and the RX380 by the built-in `pzem-016` and `rx380`).
//! - [`Duties`] is what a model does between polls besides being read (a PMTR_001_SRV's clock,
//!   relay actions and reboot sentinel): it decides purely when one is due and runs it as a
//!   thin sequence of transactions, reporting through [`Report`].

use super::{definition, pmtr_srv, DecodeError, Model, RegisterImage};
use crate::modbus::transport::{Line, Outcome, Transport};
use crate::modbus::{Exception, Request};
use crate::reading::{Phase, Sample};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;
use tokio::time::Instant;

/// A way of reading a meter: which registers in which requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    PmtrSrv(pmtr_srv::Plan),
    /// A meter read by its definition.
    Defined(definition::Plan),
}

impl Plan {
    /// A PMTR_001_SRV's plan (None for other models).
    pub fn server(self) -> Option<pmtr_srv::Plan> {
        match self {
            Plan::PmtrSrv(p) => Some(p),
            _ => None,
        }
    }
}

/// The layouts planned on this thread: (definition, plan, registers due, layout), the
/// registers due None for a definition that reads every register at every poll. A poll asks
/// for its layout twice (its requests, then its decoding) and a meter's changes only after a
/// refusal or on a poll that reads its slower registers, so each is planned once.
type Layouts = Vec<(*const definition::Definition, definition::Plan, Option<u128>, Rc<definition::Layout>)>;

thread_local! {
    static LAYOUTS: RefCell<Layouts> = const { RefCell::new(Vec::new()) };
}

/// The most layouts kept per thread: a daemon needs one per definition in use and plan (and
/// per set of registers due, for definitions with slower ones); past this all are planned again.
const MAX_LAYOUTS: usize = 64;

/// `d`'s layout for poll number `poll` by `plan`, planned once per thread.
fn layout(d: &'static definition::Definition, plan: definition::Plan, poll: u64) -> Rc<definition::Layout> {
    let key = std::ptr::from_ref(d);
    LAYOUTS.with(|cell| {
        let mut all = cell.borrow_mut();
        // Most definitions read every register at every poll: their one layout per plan is
        // found without working out which registers are due.
        let mut due = None;
        for (k, p, m, l) in all.iter() {
            if *k != key || *p != plan {
                continue;
            }
            let Some(m) = m else { return l.clone() };
            let want = *due.get_or_insert_with(|| d.due_mask(poll));
            if want == Some(*m) {
                return l.clone();
            }
        }
        let l = Rc::new(d.layout(plan, poll));
        let mask = match due.unwrap_or_else(|| d.due_mask(poll)) {
            _ if d.registers.iter().all(|r| r.every <= 1) => None,
            Some(m) => Some(m),
            // Over 128 registers and some slower: planned at each poll.
            None => return l,
        };
        if all.len() >= MAX_LAYOUTS {
            all.clear();
        }
        all.push((key, plan, mask, l.clone()));
        l
    })
}

/// What one good poll decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub samples: Vec<Sample>,
    /// A PMTR_001_SRV's reboot sentinel and low-power flag, for its [`Duties`].
    pub server: Option<pmtr_srv::ServerRead>,
}

/// How one meter is read. Pure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reader {
    pub model: Model,
    pub address: u8,
    /// Where a single-phase meter is connected.
    pub phase: Phase,
    /// What active power and energy are multiplied by (a PMTR_001_SRV's `multiplier`; 1 for
    /// the others).
    pub multiplier: f64,
    /// The number of the poll (the first is 0), for registers a definition reads only every
    /// Nth poll.
    pub poll: u64,
}

impl Reader {
    /// A meter of `model` at `address`, on L1, multiplier 1.
    pub fn new(model: Model, address: u8) -> Reader {
        Reader { model, address, phase: Phase::L1, multiplier: 1.0, poll: 0 }
    }

    /// The definition the meter is read by, if it is read by one (all but a PMTR_001_SRV).
    fn definition(&self) -> Option<&'static definition::Definition> {
        definition::read_by(self.model)
    }

    /// The plan to start with, given how many meters share the bus (a PMTR_001_SRV alone on
    /// its bus is read in one block, else in chunks that spare the others' receive buffers).
    pub fn first_plan(&self, meters_on_bus: usize) -> Plan {
        match (self.model, self.definition()) {
            (Model::PmtrSrv, _) => Plan::PmtrSrv(pmtr_srv::Plan::first(meters_on_bus)),
            (_, Some(d)) => Plan::Defined(d.first_plan()),
            // A model known only by name reads nothing.
            (_, None) => Plan::Defined(definition::Plan::Values),
        }
    }

    /// Every plan of the model, largest blocks first.
    pub fn plans(&self) -> Vec<Plan> {
        let first = match self.model {
            Model::PmtrSrv => Plan::PmtrSrv(pmtr_srv::Plan::Block),
            _ => self.first_plan(1),
        };
        std::iter::successors(Some(first), |&p| self.smaller(p)).collect()
    }

    /// The plan after `plan` was refused, if the model has a smaller one.
    pub fn smaller(&self, plan: Plan) -> Option<Plan> {
        match plan {
            Plan::PmtrSrv(p) => p.smaller().map(Plan::PmtrSrv),
            Plan::Defined(p) => self.definition()?.smaller(p).map(Plan::Defined),
        }
    }

    /// The requests of one poll by `plan`.
    pub fn requests(&self, plan: Plan) -> Vec<Request> {
        match plan {
            Plan::PmtrSrv(p) => pmtr_srv::requests(self.address, p),
            Plan::Defined(p) => match self.definition() {
                Some(d) => layout(d, p, self.poll).requests(self.address),
                None => Vec::new(),
            },
        }
    }

    /// Decodes the replies to [`Reader::requests`] of `plan` (in the same order).
    pub fn decode(&self, plan: Plan, replies: &[Vec<u16>]) -> Result<Decoded, DecodeError> {
        match plan {
            Plan::Defined(p) => {
                let d = self.definition().ok_or(DecodeError::Missing("the model's definition"))?;
                let samples = layout(d, p, self.poll).decode(d, replies, self.phase)?;
                Ok(Decoded { samples, server: None })
            }
            Plan::PmtrSrv(p) => {
                let requests = self.requests(plan);
                if requests.len() != replies.len() {
                    return Err(DecodeError::Missing("a reply"));
                }
                let image = RegisterImage::from_replies(&requests, replies);
                pmtr_srv::decode(&image, p, self.multiplier)
                    .map(|t| Decoded { server: Some(t.server_read()), samples: t.samples })
            }
        }
    }

    /// The plan to read by from now on after the meter answered a request of `plan` with
    /// `exception`, if any: smaller blocks when it refuses the registers asked for (02, 03).
    pub fn fallback(&self, plan: Plan, exception: Exception) -> Option<Plan> {
        exception.refuses_the_block().then(|| self.smaller(plan)).flatten()
    }
}

/// Where a model's duties report: the meter's name for the log, its counters, its status.
pub trait Report: Sync {
    fn meter(&self) -> &str;
    /// Counts one transaction.
    fn count(&self, out: &Outcome);
    /// Updates what the status shows of a PMTR_001_SRV.
    fn server(&self, update: &mut (dyn FnMut(&mut pmtr_srv::ServerStatus) + Send));
}

/// How a duty reaches its meter, and when it runs.
#[derive(Clone, Copy)]
pub struct DutyCall<'a> {
    /// The plan its meter is read by now.
    pub plan: Plan,
    pub address: u8,
    /// The reply timeout and tries of one transaction.
    pub timeout: Duration,
    pub attempts: u32,
    pub now: Instant,
    /// Whether the gateway's own clock can be sent (see [`crate::clock`]).
    pub clock_believed: bool,
    pub report: &'a dyn Report,
}

/// A duty run: `Err` only when the port failed (a duty that failed is the driver's to retry).
pub type DutyRun<'a> = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send + 'a>>;

/// What a model does between polls besides being read.
pub trait Duties<L: Line>: Send {
    /// After a good poll of `plan`, with what it read for the duties.
    fn after_poll(&mut self, plan: Plan, read: pmtr_srv::ServerRead, report: &dyn Report);

    /// Whether a duty is due at `now`. Pure.
    fn due(&self, now: Instant, clock_believed: bool) -> bool;

    /// Runs the duty due, if any, on `t`.
    fn run<'a>(&'a mut self, t: &'a mut Transport<L>, call: DutyCall<'a>) -> DutyRun<'a>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One rule for every model: exception 02 or 03 moves to the next smaller plan while there
    /// is one; any other exception, or the last plan, keeps the plan.
    #[test]
    fn the_fallback_after_an_exception_is_one_rule() {
        for model in Model::ALL {
            let r = Reader::new(model, 1);
            let plans = r.plans();
            for (k, &plan) in plans.iter().enumerate() {
                for code in 0..=255u8 {
                    let e = Exception::from_code(code);
                    let want = if matches!(code, 2 | 3) { plans.get(k + 1).copied() } else { None };
                    assert_eq!(r.fallback(plan, e), want, "{model} {plan:?} {e}");
                }
            }
        }
        let blocks = |max_block| Plan::Defined(definition::Plan::Blocks { max_block, max_gap: 0 });
        assert_eq!(Reader::new(Model::Pzem016, 1).plans(), [blocks(10)]);
        assert_eq!(Reader::new(Model::Rx380, 1).plans(), [blocks(40), blocks(12)]);
        assert_eq!(Reader::new(Model::PmtrSrv, 1).plans().len(), 3);
    }

    /// A meter read by its definition: the definition's plans and fallback, and registers
    /// read only every Nth poll asked for and decoded on those polls only.
    #[test]
    fn a_definition_is_read_by_its_own_plans_and_every_nth_poll() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cases/meters/good.toml"))
                .unwrap();
        let def = definition::parse(&text, "good.toml").unwrap();
        let every_10 = def.registers.iter().find(|r| r.every == 10).map(|r| r.address).unwrap();
        let model = definition::intern(def.clone());
        let r = Reader { phase: Phase::L3, ..Reader::new(model, 7) };
        let plans: Vec<Plan> = def.plans().into_iter().map(Plan::Defined).collect();
        assert_eq!(r.plans(), plans);
        assert_eq!(r.first_plan(4), plans[0]);
        assert_eq!(r.fallback(plans[0], Exception::IllegalDataAddress), plans.get(1).copied());
        assert_eq!(r.fallback(plans[0], Exception::SlaveDeviceBusy), None);
        let asks = |r: &Reader| {
            r.requests(plans[0]).iter().any(|q| match q.pdu {
                crate::modbus::Pdu::ReadHolding { start, count } => {
                    (start..start + count).contains(&every_10)
                }
                _ => false,
            })
        };
        let tenth = Reader { poll: 10, ..r };
        let second = Reader { poll: 1, ..r };
        assert!(asks(&r) && asks(&tenth) && !asks(&second));
        let replies = |r: &Reader| -> Vec<Vec<u16>> {
            r.requests(plans[0])
                .iter()
                .map(|q| match q.pdu {
                    crate::modbus::Pdu::ReadHolding { count, .. } => vec![1; usize::from(count)],
                    _ => Vec::new(),
                })
                .collect()
        };
        let energy = |r: &Reader| {
            let d = r.decode(plans[0], &replies(r)).unwrap();
            assert!(d.samples.iter().all(|s| s.phase == Phase::L3 || s.phase == Phase::Total), "{d:?}");
            d.samples.iter().any(|s| s.quantity == crate::reading::Quantity::ImportActiveEnergy)
        };
        assert!(energy(&r) && !energy(&second));
        assert_eq!(model.sample_set(Phase::L3).len(), def.registers.len());
    }

    /// The layouts kept per thread are the ones planned afresh, whatever order the polls,
    /// plans and definitions come in (a definition with slower registers included).
    #[test]
    fn kept_layouts_are_the_layouts_planned() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cases/meters/good.toml"))
                .unwrap();
        let mine =
            definition::of(definition::intern(definition::parse(&text, "good.toml").unwrap())).unwrap();
        let defs: Vec<&'static definition::Definition> = [Model::Pzem016, Model::Rx380]
            .into_iter()
            .filter_map(definition::read_by)
            .chain([mine])
            .collect();
        for poll in [0u64, 1, 10, 3, 20, 1, 0] {
            for &d in &defs {
                for p in d.plans() {
                    assert_eq!(*layout(d, p, poll), d.layout(p, poll), "{} {p:?} poll {poll}", d.name);
                }
            }
        }
    }

    #[test]
    fn a_server_alone_on_its_bus_is_read_in_one_block() {
        let r = Reader::new(Model::PmtrSrv, 5);
        assert_eq!(r.first_plan(1), Plan::PmtrSrv(pmtr_srv::Plan::Block));
        assert_eq!(r.first_plan(2), Plan::PmtrSrv(pmtr_srv::Plan::Chunks));
        assert_eq!(
            Reader::new(Model::Rx380, 1).first_plan(3),
            Plan::Defined(definition::Plan::Blocks { max_block: 40, max_gap: 0 })
        );
    }

    /// The telemetry of a server is decoded in one place, with the meter's multiplier.
    #[test]
    fn a_server_is_decoded_with_its_multiplier() {
        let mut regs = vec![0u16; 38];
        regs[1] = 12_480; // 12 V supply
        regs[86 - 78] = 250; // L1 power
        regs[92 - 78] = 500; // L1 answered (50 Hz)
        regs[115 - 78] = 7;
        let r = Reader { multiplier: 2.0, ..Reader::new(Model::PmtrSrv, 5) };
        let d = r.decode(Plan::PmtrSrv(pmtr_srv::Plan::Block), &[regs]).unwrap();
        let power = d
            .samples
            .iter()
            .find(|s| s.phase == Phase::L1 && s.quantity == crate::reading::Quantity::ActivePower);
        assert_eq!(power.map(|s| s.value), Some(500.0));
        assert_eq!(d.server, Some(pmtr_srv::ServerRead { sentinel: 7, low_power: false }));
    }
}
