//! `kiln dlq`: the dead letters of a jobs queue, listed (they stay) or
//! replayed to the jobs queue ([`kiln_broker::dlq`]).

use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand};
use kiln_broker::dlq::{self, DeadLetter, ReplayFilter, ReplayOptions, Replayed, ReplyRoute};

use super::BrokerArgs;
use crate::config::KilnConfig;

#[derive(Debug, Args)]
pub(super) struct DlqArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Show the dead letters (they stay in the queue): job id, plugin,
    /// kind, message, attempts and age.
    List {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back on the jobs queue with a reset attempt count:
    /// one job (--job-id), every one of a plugin (--plugin), or all of them
    /// (--all, narrowed by --plugin). One of the three is needed. A job
    /// whose reply queue is gone (a finished `kiln enqueue --wait`)
    /// answers to <queue>.results instead, and a line says so.
    #[command(group(
        ArgGroup::new("which")
            .args(["job_id", "all", "plugin"])
            .required(true)
            .multiple(true)
    ))]
    Replay {
        /// Only this job.
        #[arg(long, value_name = "ID", conflicts_with = "all")]
        job_id: Option<String>,
        /// Every dead letter (narrowed by --plugin).
        #[arg(long)]
        all: bool,
        /// Only jobs for this plugin (alone: every dead letter of it).
        #[arg(long, value_name = "NAME")]
        plugin: Option<String>,
        /// Send every reply to this queue instead of the job's reply_to.
        #[arg(long, value_name = "QUEUE")]
        reply_to: Option<String>,
    },
}

pub(super) async fn dlq(args: DlqArgs, mut config: KilnConfig) -> anyhow::Result<ExitCode> {
    args.broker.apply(&mut config);
    config.validate()?;
    let topology = kiln_broker::Topology::new(&config.amqp, &config.pipeline.retry_policy());
    let url = &config.amqp.url;
    // Every shard's, on a sharded jobs queue.
    let dead = dlq::dead_queues(&topology).join(", ");
    let on = |what: &str, queue: &str| {
        format!("cannot {what} {queue} on {}", config.amqp.redacted_url())
    };
    match args.command {
        DlqCommand::List { json } => {
            let letters = dlq::list(url, &topology)
                .await
                .with_context(|| on("read", &dead))?;
            if json {
                for l in &letters {
                    println!("{}", serde_json::to_string(l)?);
                }
            } else {
                print!("{}", table(&letters));
            }
            eprintln!("kiln: {} dead letters in {dead}", letters.len());
        }
        DlqCommand::Replay {
            job_id,
            all: _,
            plugin,
            reply_to,
        } => {
            let options = ReplayOptions {
                filter: ReplayFilter { job_id, plugin },
                reply_to,
            };
            let replayed = dlq::replay(url, &topology, &options)
                .await
                .with_context(|| on("replay", &dead))?;
            for r in &replayed {
                println!("replayed {}", r.letter.job_id);
                if let Some(note) = rerouted(r, &topology.results) {
                    eprintln!("kiln: {note}");
                }
            }
            eprintln!(
                "kiln: {} dead letters replayed to {}",
                replayed.len(),
                topology.jobs
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What to tell about a replayed job whose reply does not go where its
/// `reply_to` said (the queue is gone), if anything.
fn rerouted(replayed: &Replayed, results: &str) -> Option<String> {
    match &replayed.reply {
        ReplyRoute::Gone(queue) => Some(format!(
            "job {}: its reply queue {queue} is gone, the reply goes to {results}",
            replayed.letter.job_id
        )),
        ReplyRoute::Results | ReplyRoute::Kept(_) | ReplyRoute::Overridden(_) => None,
    }
}

/// The table `kiln dlq list` prints.
fn table(letters: &[DeadLetter]) -> String {
    use std::fmt::Write as _;
    let mut text = format!(
        "{:<40} {:<16} {:<18} {:>8} {:>8}  MESSAGE\n",
        "JOB ID", "PLUGIN", "KIND", "ATTEMPTS", "AGE"
    );
    for l in letters {
        let age = l
            .age_secs
            .map_or_else(|| "-".to_owned(), |s| format!("{s}s"));
        // Writing to a String cannot fail.
        let _ = writeln!(
            text,
            "{:<40} {:<16} {:<18} {:>8} {:>8}  {}",
            l.job_id,
            l.plugin.as_deref().unwrap_or("-"),
            l.kind,
            l.attempts,
            age,
            l.message
        );
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{Command, tests::parse};
    use super::*;

    /// The `dlq` options of `kiln <args>`, and the queue they name.
    fn dlq(args: &[&str]) -> (DlqCommand, String) {
        let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let Command::Dlq(dlq) = cli.command else {
            panic!("{:?}", cli.command);
        };
        let mut config = KilnConfig::default();
        dlq.broker.apply(&mut config);
        (dlq.command, config.amqp.queue)
    }

    #[test]
    fn broker_options_go_before_or_after_the_dlq_subcommand() {
        for args in [
            &["dlq", "list", "--queue", "kiln.jobs.x"][..],
            &["dlq", "--queue", "kiln.jobs.x", "list"][..],
            &["dlq", "replay", "--all", "--queue", "kiln.jobs.x"][..],
            &["dlq", "--queue", "kiln.jobs.x", "replay", "--all"][..],
        ] {
            let (_, queue) = dlq(args);
            assert_eq!(queue, "kiln.jobs.x", "{args:?}");
        }
        let cli = parse(&["dlq", "list", "--json", "--amqp-url", "amqp://h"]).unwrap();
        let Command::Dlq(args) = cli.command else {
            panic!("{:?}", cli.command);
        };
        assert_eq!(args.broker.amqp_url.as_deref(), Some("amqp://h"));
        assert!(matches!(args.command, DlqCommand::List { json: true }));
    }

    #[test]
    fn replay_takes_a_job_a_plugin_or_all() {
        let filter = |args: &[&str]| match dlq(args).0 {
            DlqCommand::Replay {
                job_id,
                plugin,
                reply_to,
                ..
            } => {
                assert_eq!(reply_to, None, "{args:?}");
                (job_id, plugin)
            }
            other => panic!("{args:?}: {other:?}"),
        };
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            filter(&["dlq", "replay", "--job-id", "r1"]),
            (some("r1"), None)
        );
        // --plugin alone: every dead letter of that plugin.
        assert_eq!(
            filter(&["dlq", "replay", "--plugin", "reverse"]),
            (None, some("reverse"))
        );
        assert_eq!(
            filter(&["dlq", "replay", "--all", "--plugin", "reverse"]),
            (None, some("reverse"))
        );
        assert_eq!(filter(&["dlq", "replay", "--all"]), (None, None));
        assert_eq!(
            filter(&["dlq", "replay", "--job-id", "r1", "--plugin", "reverse"]),
            (some("r1"), some("reverse"))
        );
        // Nothing named: refused, not "replay everything".
        for args in [
            &["dlq", "replay"][..],
            &["dlq", "replay", "--job-id", "r1", "--all"][..],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn replay_takes_a_reply_queue() {
        match dlq(&["dlq", "replay", "--all", "--reply-to", "mine"]).0 {
            DlqCommand::Replay { reply_to, .. } => assert_eq!(reply_to.as_deref(), Some("mine")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reply_sent_to_results_instead_is_told() {
        let letter = DeadLetter {
            job_id: "j1".into(),
            plugin: None,
            kind: "k".into(),
            message: "m".into(),
            attempts: 1,
            age_secs: None,
        };
        let told = |reply| {
            rerouted(
                &Replayed {
                    letter: letter.clone(),
                    reply,
                },
                "q.results",
            )
        };
        assert_eq!(
            told(ReplyRoute::Gone("q.replies.ab".into())).as_deref(),
            Some("job j1: its reply queue q.replies.ab is gone, the reply goes to q.results")
        );
        for quiet in [
            ReplyRoute::Results,
            ReplyRoute::Kept("r".into()),
            ReplyRoute::Overridden("r".into()),
        ] {
            assert_eq!(told(quiet.clone()), None, "{quiet:?}");
        }
    }

    #[test]
    fn the_list_table_has_a_line_per_dead_letter() {
        let letters = [
            DeadLetter {
                job_id: "j1".into(),
                plugin: Some("reverse".into()),
                kind: "unknown-plugin".into(),
                message: "no plugin named reverse".into(),
                attempts: 1,
                age_secs: Some(42),
            },
            DeadLetter {
                job_id: "j2".into(),
                plugin: None,
                kind: "bad-request".into(),
                message: "not json".into(),
                attempts: 3,
                age_secs: None,
            },
        ];
        let table = table(&letters);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("JOB ID "), "{table}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "j1",
                "reverse",
                "unknown-plugin",
                "1",
                "42s",
                "no",
                "plugin",
                "named",
                "reverse"
            ]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["j2", "-", "bad-request", "3", "-", "not", "json"]
        );
    }
}
