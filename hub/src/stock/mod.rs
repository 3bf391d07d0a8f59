//! Stock types shipped in the binary: consumers `echo`, `delay`, `reply`; producer `ticker`.

mod delay;
mod echo;
mod reply;
mod ticker;

pub use delay::DelayConfig;
pub use echo::EchoConfig;
pub use reply::ReplyConfig;
pub use ticker::{Burst, TickerConfig};
