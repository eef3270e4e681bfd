//! The commands that plan and change a cluster: `plan`, `apply`, `destroy`.
//! Each opens the stack, its state (locked) and the cluster, makes a plan,
//! and for apply and destroy carries it out.

use super::args::{ApplyArgs, DestroyArgs, Global, PlanArgs, Take};
use super::output::Out;
use super::*;

pub(super) async fn plan(args: PlanArgs, g: &Global, out: &Out) -> Result<u8, Error> {
    let PlanArgs {
        stack,
        out: save,
        detailed_exitcode,
        json,
        destroy,
        take,
    } = args;
    // Held while planning, as Terraform does: no apply moves the state meanwhile.
    let session = ops::open(&g.place(&stack), Operation::Plan, out).await?;
    let s = &session.stack;
    if let (true, Some(path)) = (session.new, &save) {
        // A saved plan is checked against the state's lineage and pins secret
        // values by fingerprints under the state's key: without a state there
        // is nothing durable to check against, and plan never writes one.
        return Err(format!(
            "the stack `{}` has no state yet at {}, and a saved plan is checked against its state\n  help: create the state once with `{}`, then plan again with --out {}",
            s.name,
            s.state,
            suggest::rayform(g, ["init", &suggest::path(&stack)]),
            path.display()
        )
        .into());
    }
    let intent = if destroy {
        Intent::Destroy { force: false }
    } else {
        Intent::Apply
    };
    let plan = session.plan(&request(&take, intent), out).await?;
    if json {
        out.raw(&(plan::render_json(&plan) + "\n"));
    } else {
        out.raw(&plan_text(&plan, out, g));
    }
    match save {
        Some(path) if plan.errors.is_empty() => {
            ops::save_plan(&plan, &path, out)?;
            if !json {
                out.line(&format!(
                    "\nSaved the plan to {}. To apply exactly this plan: rayform apply {}",
                    path.display(),
                    path.display()
                ));
            }
        }
        Some(path) => out.error(&format!(
            "the plan has errors, so it was not saved to {}",
            path.display()
        )),
        None => {}
    }
    if !plan.errors.is_empty() {
        return Ok(1);
    }
    Ok(if detailed_exitcode && plan.has_changes() {
        2
    } else {
        0
    })
}

pub(super) async fn apply(
    args: ApplyArgs,
    g: &Global,
    out: &Out,
    stop: &Stop,
) -> Result<u8, Error> {
    let json = args.json;
    ended_with_json(json, out, apply_run(args, g, out, stop).await)
}

async fn apply_run(args: ApplyArgs, g: &Global, out: &Out, stop: &Stop) -> Result<u8, Error> {
    let ApplyArgs {
        target,
        auto_approve,
        take,
        run,
        no_wait,
        keep_waiting,
        endpoint,
        json,
    } = args;
    if json && !auto_approve && !is_plan_file(&target) {
        // No question can be asked on a stream of JSON.
        return Err("apply --json needs --auto-approve (or a plan saved with `plan --out`)".into());
    }
    let how = Execution {
        run: &run,
        global: g,
        json,
        wait: match (no_wait, keep_waiting) {
            (true, _) => Readiness::Skip,
            (false, true) => Readiness::Wait(OnStuck::KeepWaiting),
            (false, false) => Readiness::Wait(OnStuck::Fail),
        },
        endpoint,
        stop,
    };
    if is_plan_file(&target) {
        let given = take.given();
        if !given.is_empty() {
            let stack = ops::read_plan(&target)?.stack_file;
            let mut words = vec!["plan".to_string(), suggest::path(&stack).into_owned()];
            words.extend(take.as_args());
            words.extend(["--out".to_string(), suggest::path(&target).into_owned()]);
            return Err(format!(
                "{} cannot change a saved plan: what it does was decided when it was made\n  help: make the plan again with them: `{}`",
                given.join(", "),
                suggest::rayform(g, words.iter().map(String::as_str))
            )
            .into());
        }
        apply_saved(&target, g, how, out).await
    } else {
        let session = ops::open(&g.place(&target), Operation::Apply, out).await?;
        let plan = session.plan(&request(&take, Intent::Apply), out).await?;
        show_plan(&plan, json, out, g);
        if !plan.errors.is_empty() {
            return Err("the plan has errors; nothing was changed".into());
        }
        // Recording an object that is already right changes only the
        // state: no question to ask (unless recording is what was asked
        // for, with --refresh-only), but it must still be written.
        if !ops::has_work(&plan, !no_wait) {
            if json {
                events::complete(out, &plan, &apply::ApplyReport::default());
            }
            return Ok(0);
        }
        let state_only = plan.changes.iter().any(plan::Change::records_only);
        if (plan.needs_approval() || (take.refresh_only && state_only))
            && let Answer::Declined(code) = confirm(auto_approve, "apply", out, stop).await?
        {
            return Ok(code);
        }
        let secrets = ops::read_secrets(&session.stack, out)?;
        execute(session.into_held()?, &plan, secrets, how, out).await
    }
}

pub(super) async fn destroy(
    args: DestroyArgs,
    g: &Global,
    out: &Out,
    stop: &Stop,
) -> Result<u8, Error> {
    let json = args.json;
    ended_with_json(json, out, destroy_run(args, g, out, stop).await)
}

/// An apply's or destroy's outcome, with its closing event under `--json`.
fn ended_with_json(json: bool, out: &Out, outcome: Result<u8, Error>) -> Result<u8, Error> {
    if json {
        events::ended(out, &outcome);
    }
    outcome
}

async fn destroy_run(args: DestroyArgs, g: &Global, out: &Out, stop: &Stop) -> Result<u8, Error> {
    let DestroyArgs {
        stack,
        auto_approve,
        force,
        targets,
        run,
        json,
    } = args;
    let session = ops::open(&g.place(&stack), Operation::Destroy, out).await?;
    let take = Take {
        targets,
        ..Take::default()
    };
    let plan = session
        .plan(&request(&take, Intent::Destroy { force }), out)
        .await?;
    show_plan(&plan, json, out, g);
    if !plan.errors.is_empty() {
        return Err("the destroy plan has errors; nothing was changed".into());
    }
    if !ops::has_work(&plan, false) {
        if json {
            events::complete(out, &plan, &apply::ApplyReport::default());
        }
        return Ok(0);
    }
    if plan.needs_approval()
        && let Answer::Declined(code) = confirm(auto_approve, "destroy", out, stop).await?
    {
        return Ok(code);
    }
    let how = Execution {
        run: &run,
        global: g,
        json,
        wait: Readiness::Skip,
        endpoint: None,
        stop,
    };
    execute(session.into_held()?, &plan, SecretValues::new(), how, out).await
}

/// The plan `take`'s flags ask for, for `intent`.
fn request(take: &Take, intent: Intent) -> ops::PlanRequest {
    ops::PlanRequest {
        intent,
        dry_run: take.dry_run_policy(),
        force_conflicts: take.force_conflicts,
        adopt: take.adopt.clone(),
        targets: take.targets.clone(),
        refresh_only: take.refresh_only,
    }
}

/// The plan before a change: as text, or as the first JSON event.
fn show_plan(plan: &Plan, json: bool, out: &Out, g: &Global) {
    if json {
        events::plan(out, plan);
    } else {
        out.raw(&plan_text(plan, out, g));
    }
}
