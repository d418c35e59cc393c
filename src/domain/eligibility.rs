//! Which segments may go to which destination, and which of them break its size limits
//! (PRODUCT.md §5–§6, CONNECTORS.md).
//!
//! The same rules run at create, update, `validate_only`, run start and when listing eligible
//! segments, so they live here once, as pure functions over facts the caller has already read.
//! Ineligibility is an error; limits are only warnings here, because at selection time the
//! segment may still shrink or grow before a run, and the run decides to skip on its own.

use super::connection_type::{ConnectionTypeSpec, SegmentType, TargetOptionSpec};
use super::environment::EnvironmentKind;
use crate::error::Error;

/// The error reason, precondition kind and warning codes are API: clients switch on them.
pub const SEGMENT_NOT_ELIGIBLE: &str = "SEGMENT_NOT_ELIGIBLE";
pub const SEGMENT_OVER_LIMIT: &str = "SEGMENT_OVER_LIMIT";
pub const SEGMENT_UNDER_MINIMUM: &str = "SEGMENT_UNDER_MINIMUM";

const ALL_TYPES: &[SegmentType] = &[SegmentType::Profile, SegmentType::Account, SegmentType::Contact];

/// A segment as eligibility sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentFacts {
    /// Resource name; the subject of violations and warnings, so clients can match them up.
    pub name: String,
    /// What people see; the only name the §5 message uses.
    pub display_name: String,
    pub segment_type: SegmentType,
    pub member_count: i64,
}

/// The destination: environment kind, connection type, the `target` setting, and the limits
/// that apply.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    pub environment_kind: EnvironmentKind,
    pub spec: &'a ConnectionTypeSpec,
    /// The export setting `target`; None = the type's first (default) option.
    pub target: Option<&'a str>,
    /// The effective limit (the connection's own, else the type's); 0 = none. Passed in rather
    /// than derived so that this module need not know where an override is stored.
    pub profile_limit: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub eligible: bool,
    /// Why not eligible; else the warning text when over the limit or under the minimum; else
    /// empty. One field, because a listing shows one line per segment.
    pub reason: String,
    pub over_limit: bool,
    pub under_minimum: bool,
}

/// What the `target` setting resolves to. An unknown value is kept rather than rejected, so that
/// a listing can still say why nothing is eligible instead of failing as a whole.
enum Target<'a> {
    /// The type has no target options: its own accepted types and identifiers apply.
    None,
    Known(&'static TargetOptionSpec),
    Unknown(&'a str),
}

impl<'a> Destination<'a> {
    fn resolve_target(&self) -> Target<'a> {
        let options = self.spec.target_options;
        if options.is_empty() {
            // Such types have no `target` setting; settings validation reports a stray one.
            return Target::None;
        }
        match self.target {
            None => Target::Known(&options[0]),
            Some(value) => match options.iter().find(|o| o.value == value) {
                Some(option) => Target::Known(option),
                None => Target::Unknown(value),
            },
        }
    }

    /// The segment types this destination accepts (honouring the target option).
    ///
    /// In B-to-B there are no profile segments to speak of: a people-addressing target either
    /// takes accounts (its option says so) or needs contact fields, so PROFILE is dropped there,
    /// while storage-like targets take whatever the segment is.
    pub fn accepted_types(&self) -> Vec<SegmentType> {
        let catalogued: &[SegmentType] = match self.resolve_target() {
            Target::None => self.spec.segment_types,
            Target::Known(option) => option.segment_types,
            Target::Unknown(_) => return Vec::new(),
        };
        match self.environment_kind {
            EnvironmentKind::IndividualCustomers => catalogued.to_vec(),
            EnvironmentKind::BusinessAccounts if !self.spec.category.addresses_people() => ALL_TYPES.to_vec(),
            EnvironmentKind::BusinessAccounts => catalogued
                .iter()
                .copied()
                .filter(|t| *t != SegmentType::Profile)
                .collect(),
        }
    }

    /// The type's minimum audience size; it does not depend on the target option, since the
    /// vendor's minimum is per audience whatever the audience is matched on.
    pub fn minimum_segment_size(&self) -> i64 {
        self.spec.minimum_segment_size
    }

    pub fn assess(&self, segment: &SegmentFacts) -> Assessment {
        let eligible = self.accepted_types().contains(&segment.segment_type);
        let over_limit = self.is_over_limit(segment.member_count);
        let under_minimum = self.is_under_minimum(segment.member_count);
        let reason = if eligible {
            let texts: Vec<String> = warnings(self, segment).into_iter().map(|(_, text, _)| text).collect();
            texts.join("; ")
        } else {
            self.ineligibility_message(&[segment.display_name.as_str()])
        };
        Assessment {
            eligible,
            reason,
            over_limit,
            under_minimum,
        }
    }

    /// Identifier fields that apply (target option's, else the type's): a COMPANY audience is
    /// matched on company fields, not on the type's default `email`.
    pub fn identifier_fields(&self) -> &'static [&'static str] {
        match self.resolve_target() {
            Target::Known(option) => option.identifier_fields,
            Target::None | Target::Unknown(_) => self.spec.identifier_fields,
        }
    }

    fn is_over_limit(&self, member_count: i64) -> bool {
        self.profile_limit > 0 && member_count > self.profile_limit
    }

    fn is_under_minimum(&self, member_count: i64) -> bool {
        let minimum = self.minimum_segment_size();
        minimum > 0 && member_count < minimum
    }

    /// The §5 sentence, singular or plural; its second half says what would be eligible instead.
    fn ineligibility_message(&self, display_names: &[&str]) -> String {
        let quoted: Vec<String> = display_names.iter().map(|n| format!("'{n}'")).collect();
        let head = if quoted.len() == 1 {
            "The following segment is not eligible for this export destination"
        } else {
            "The following segments are not eligible for this export destination"
        };
        let advice = match self.resolve_target() {
            Target::Unknown(value) => {
                let valid: Vec<&str> = self.spec.target_options.iter().map(|o| o.value).collect();
                format!(
                    "The export setting target '{value}' is not valid for {}; valid targets: {}.",
                    self.spec.display_name,
                    valid.join(", ")
                )
            }
            Target::None | Target::Known(_) => {
                let labels: Vec<&str> = self.accepted_types().into_iter().map(type_label).collect();
                if labels.is_empty() {
                    "This export destination accepts no segments.".to_string()
                } else {
                    format!(
                        "Please choose only segments of type {} and try again.",
                        labels.join(" or ")
                    )
                }
            }
        };
        format!("{head}: {}. {advice}", quoted.join(", "))
    }
}

/// The names §5 uses for segment types ("ContactProfile" is the contact entity's name there).
fn type_label(segment_type: SegmentType) -> &'static str {
    match segment_type {
        SegmentType::Profile => "Profile",
        SegmentType::Account => "Account",
        SegmentType::Contact => "ContactProfile",
    }
}

/// FAILED_PRECONDITION with exactly the message of PRODUCT.md §5, naming the segments in the
/// order given; one precondition violation per segment so a client can mark each one.
pub fn not_eligible_error(destination: &Destination, ineligible: &[&SegmentFacts]) -> Error {
    let display_names: Vec<&str> = ineligible.iter().map(|s| s.display_name.as_str()).collect();
    let names: Vec<&str> = ineligible.iter().map(|s| s.name.as_str()).collect();
    let mut err = Error::precondition(SEGMENT_NOT_ELIGIBLE, destination.ineligibility_message(&display_names))
        .with_meta("segments", names.join(","))
        .with_meta("destination", destination.spec.id);
    for segment in ineligible {
        err = err.with_precondition(
            SEGMENT_NOT_ELIGIBLE,
            segment.name.clone(),
            destination.ineligibility_message(&[segment.display_name.as_str()]),
        );
    }
    err
}

/// Warnings for a segment over the limit or under the minimum, as (code, message, subject).
/// Both can apply at once when an admin sets a limit below the vendor's minimum.
/// What a limit warning adds to its finding: the consequence, for someone choosing segments.
const RUNS_WILL_BE_SKIPPED: &str = "; runs will be skipped";

/// The finding of a limit warning without that advice: why a run was skipped ("segment 'VIP'
/// has 1,250 members, over the limit of 1,000 profiles per segment of this connection").
pub fn skip_reason_of(warning: &str) -> &str {
    warning.strip_suffix(RUNS_WILL_BE_SKIPPED).unwrap_or(warning)
}

pub fn warnings(destination: &Destination, segment: &SegmentFacts) -> Vec<(String, String, String)> {
    let count = segment.member_count;
    let mut out = Vec::new();
    if destination.is_over_limit(count) {
        out.push((
            SEGMENT_OVER_LIMIT.to_string(),
            format!(
                "segment '{}' has {}, over the limit of {} per segment of this connection{RUNS_WILL_BE_SKIPPED}",
                segment.display_name,
                counted(count, "member", "members"),
                counted(destination.profile_limit, "profile", "profiles"),
            ),
            segment.name.clone(),
        ));
    }
    if destination.is_under_minimum(count) {
        out.push((
            SEGMENT_UNDER_MINIMUM.to_string(),
            format!(
                "segment '{}' has {}, under the minimum of {} per segment of {}{RUNS_WILL_BE_SKIPPED}",
                segment.display_name,
                counted(count, "member", "members"),
                counted(destination.minimum_segment_size(), "profile", "profiles"),
                destination.spec.display_name,
            ),
            segment.name.clone(),
        ));
    }
    out
}

fn counted(n: i64, one: &str, many: &str) -> String {
    format!("{} {}", group_thousands(n), if n == 1 { one } else { many })
}

/// `1234567` → `1,234,567`: counts in messages are read by people, who compare them by eye.
fn group_thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::registry::find;
    use crate::error::{ErrorCode, PreconditionViolation};
    use EnvironmentKind::{BusinessAccounts as B2B, IndividualCustomers as B2C};
    use SegmentType::{Account, Contact, Profile};

    fn segment(id: &str, display_name: &str, segment_type: SegmentType, member_count: i64) -> SegmentFacts {
        SegmentFacts {
            name: format!("environments/e1/segments/{id}"),
            display_name: display_name.to_string(),
            segment_type,
            member_count,
        }
    }

    /// A destination with the type's default limit, as a connection without an override has.
    fn to(kind: EnvironmentKind, type_id: &str, target: Option<&'static str>) -> Destination<'static> {
        let spec = find(type_id).expect("type in the catalogue");
        Destination {
            environment_kind: kind,
            spec,
            target,
            profile_limit: spec.profile_limit,
        }
    }

    fn fine() -> Assessment {
        Assessment {
            eligible: true,
            reason: String::new(),
            over_limit: false,
            under_minimum: false,
        }
    }

    #[test]
    fn b2c_takes_any_profile_segment_to_people_and_storage_targets() {
        let s = segment("s1", "All buyers", Profile, 1_000);
        for id in [
            "mailchimp",
            "facebook-ads",
            "google-ads",
            "linkedin-ads",
            "local-files",
            "webhook",
        ] {
            assert_eq!(to(B2C, id, None).assess(&s), fine(), "{id}");
        }
        assert_eq!(to(B2C, "mailchimp", None).accepted_types(), vec![Profile, Contact]);
    }

    #[test]
    fn b2b_storage_database_and_webhook_take_every_segment_as_it_is() {
        for id in ["local-files", "s3", "azure-blob", "sftp", "postgres", "webhook"] {
            let d = to(B2B, id, None);
            assert_eq!(d.accepted_types(), vec![Profile, Account, Contact], "{id}");
            assert_eq!(d.assess(&segment("a", "Key accounts", Account, 50)), fine(), "{id}");
            assert_eq!(d.assess(&segment("c", "Decision makers", Contact, 50)), fine(), "{id}");
        }
    }

    #[test]
    fn b2b_account_segment_to_mailchimp_gets_the_exact_singular_message() {
        let d = to(B2B, "mailchimp", None);
        assert_eq!(d.accepted_types(), vec![Contact]);
        let a = segment("a", "Key accounts", Account, 50);
        let expected = "The following segment is not eligible for this export destination: 'Key accounts'. \
                        Please choose only segments of type ContactProfile and try again.";
        assert_eq!(
            d.assess(&a),
            Assessment {
                eligible: false,
                reason: expected.to_string(),
                over_limit: false,
                under_minimum: false,
            }
        );
        assert_eq!(not_eligible_error(&d, &[&a]).message, expected);
    }

    #[test]
    fn several_ineligible_segments_get_the_plural_message_in_the_given_order() {
        let d = to(B2B, "mailchimp", None);
        let b = segment("b", "B", Account, 10);
        let a = segment("a", "A", Account, 10);
        assert_eq!(
            not_eligible_error(&d, &[&b, &a]).message,
            "The following segments are not eligible for this export destination: 'B', 'A'. \
             Please choose only segments of type ContactProfile and try again."
        );
    }

    #[test]
    fn b2b_contact_segment_to_mailchimp_is_eligible() {
        let d = to(B2B, "mailchimp", None);
        assert_eq!(d.assess(&segment("c", "Decision makers", Contact, 5_000)), fine());
    }

    #[test]
    fn linkedin_contact_target_wants_contacts_in_b2b() {
        for target in [None, Some("CONTACT")] {
            let d = to(B2B, "linkedin-ads", target);
            assert_eq!(d.accepted_types(), vec![Contact]);
            assert_eq!(d.identifier_fields(), &["email"]);
            assert_eq!(d.assess(&segment("c", "Decision makers", Contact, 1_000)), fine());
            let verdict = d.assess(&segment("a", "Key accounts", Account, 1_000));
            assert!(!verdict.eligible);
            assert_eq!(
                verdict.reason,
                "The following segment is not eligible for this export destination: 'Key accounts'. \
                 Please choose only segments of type ContactProfile and try again."
            );
        }
    }

    #[test]
    fn linkedin_company_target_takes_accounts_and_rejects_people() {
        let d = to(B2B, "linkedin-ads", Some("COMPANY"));
        assert_eq!(d.accepted_types(), vec![Account]);
        assert_eq!(
            d.identifier_fields(),
            &["company_name", "email_domain", "company_website"]
        );
        assert_eq!(d.assess(&segment("a", "Key accounts", Account, 1_000)), fine());
        let contact = segment("c", "Decision makers", Contact, 1_000);
        let expected = "The following segment is not eligible for this export destination: 'Decision makers'. \
                        Please choose only segments of type Account and try again.";
        assert_eq!(d.assess(&contact).reason, expected);
        assert!(!d.assess(&contact).eligible);
        // In B-to-C there are only profiles, and a company audience cannot take them either.
        let b2c = to(B2C, "linkedin-ads", Some("COMPANY"));
        let profile = segment("p", "Everyone", Profile, 1_000);
        assert_eq!(
            b2c.assess(&profile).reason,
            "The following segment is not eligible for this export destination: 'Everyone'. \
             Please choose only segments of type Account and try again."
        );
    }

    #[test]
    fn an_unknown_target_makes_nothing_eligible_and_names_the_valid_ones() {
        let d = to(B2B, "linkedin-ads", Some("PEOPLE"));
        assert!(d.accepted_types().is_empty());
        assert_eq!(d.identifier_fields(), &["email"]);
        let expected_tail = "The export setting target 'PEOPLE' is not valid for LinkedIn Ads; \
                             valid targets: CONTACT, COMPANY.";
        for s in [
            segment("a", "Key accounts", Account, 1_000),
            segment("c", "Decision makers", Contact, 1_000),
        ] {
            let verdict = d.assess(&s);
            assert!(!verdict.eligible);
            assert_eq!(
                verdict.reason,
                format!(
                    "The following segment is not eligible for this export destination: '{}'. {expected_tail}",
                    s.display_name
                )
            );
        }
        let facebook = to(B2C, "facebook-ads", Some("COMPANY"));
        assert!(!facebook.assess(&segment("p", "Everyone", Profile, 10)).eligible);
        assert!(
            facebook
                .assess(&segment("p", "Everyone", Profile, 10))
                .reason
                .ends_with(
                    "The export setting target 'COMPANY' is not valid for Facebook Ads; valid targets: CONTACT."
                )
        );
    }

    #[test]
    fn linkedin_limits_flag_but_do_not_exclude() {
        let d = to(B2B, "linkedin-ads", None);
        assert_eq!(d.minimum_segment_size(), 300);
        assert_eq!(d.profile_limit, 100_000);
        assert_eq!(
            d.assess(&segment("c", "Tiny", Contact, 299)),
            Assessment {
                eligible: true,
                reason: "segment 'Tiny' has 299 members, under the minimum of 300 profiles per segment of \
                         LinkedIn Ads; runs will be skipped"
                    .to_string(),
                over_limit: false,
                under_minimum: true,
            }
        );
        assert_eq!(
            d.assess(&segment("c", "Huge", Contact, 100_001)),
            Assessment {
                eligible: true,
                reason: "segment 'Huge' has 100,001 members, over the limit of 100,000 profiles per segment of \
                         this connection; runs will be skipped"
                    .to_string(),
                over_limit: true,
                under_minimum: false,
            }
        );
        assert_eq!(d.assess(&segment("c", "Smallest", Contact, 300)), fine());
        assert_eq!(d.assess(&segment("c", "Largest", Contact, 100_000)), fine());
    }

    #[test]
    fn an_admin_set_limit_applies_to_a_storage_type() {
        let mut d = to(B2C, "local-files", None);
        assert_eq!(d.profile_limit, 0);
        assert_eq!(d.assess(&segment("p", "Everyone", Profile, 1_000_000_000)), fine());
        d.profile_limit = 5_000;
        assert_eq!(d.assess(&segment("p", "Everyone", Profile, 5_000)), fine());
        let over = d.assess(&segment("p", "Everyone", Profile, 5_001));
        assert!(over.eligible && over.over_limit && !over.under_minimum);
        assert_eq!(
            over.reason,
            "segment 'Everyone' has 5,001 members, over the limit of 5,000 profiles per segment of this \
             connection; runs will be skipped"
        );
    }

    #[test]
    fn the_error_carries_code_reason_metadata_and_one_violation_per_segment() {
        let d = to(B2B, "mailchimp", None);
        let b = segment("b", "B", Account, 10);
        let a = segment("a", "A", Account, 10);
        let err = not_eligible_error(&d, &[&b, &a]);
        assert_eq!(err.code, ErrorCode::FailedPrecondition);
        assert_eq!(err.reason, "SEGMENT_NOT_ELIGIBLE");
        assert_eq!(err.metadata.len(), 2);
        assert_eq!(
            err.metadata["segments"],
            "environments/e1/segments/b,environments/e1/segments/a"
        );
        assert_eq!(err.metadata["destination"], "mailchimp");
        assert!(err.field_violations.is_empty());
        let violation = |id: &str, display: &str| PreconditionViolation {
            kind: "SEGMENT_NOT_ELIGIBLE".to_string(),
            subject: format!("environments/e1/segments/{id}"),
            description: format!(
                "The following segment is not eligible for this export destination: '{display}'. \
                 Please choose only segments of type ContactProfile and try again."
            ),
        };
        assert_eq!(
            err.precondition_violations,
            vec![violation("b", "B"), violation("a", "A")]
        );
    }

    #[test]
    fn warnings_name_the_segment_both_numbers_and_the_code() {
        let mut d = to(B2B, "linkedin-ads", None);
        let vip = segment("vip", "VIP", Contact, 120_000);
        assert_eq!(
            warnings(&d, &vip),
            vec![(
                "SEGMENT_OVER_LIMIT".to_string(),
                "segment 'VIP' has 120,000 members, over the limit of 100,000 profiles per segment of this \
                 connection; runs will be skipped"
                    .to_string(),
                "environments/e1/segments/vip".to_string(),
            )]
        );
        assert!(warnings(&d, &segment("ok", "OK", Contact, 1_000)).is_empty());
        // A limit below the vendor's minimum: a segment can break both at once.
        d.profile_limit = 200;
        let odd = segment("odd", "Odd", Contact, 250);
        let codes: Vec<String> = warnings(&d, &odd).into_iter().map(|(code, _, _)| code).collect();
        assert_eq!(codes, vec!["SEGMENT_OVER_LIMIT", "SEGMENT_UNDER_MINIMUM"]);
        let verdict = d.assess(&odd);
        assert!(verdict.over_limit && verdict.under_minimum && verdict.eligible);
        assert_eq!(
            verdict.reason,
            "segment 'Odd' has 250 members, over the limit of 200 profiles per segment of this connection; \
             runs will be skipped; segment 'Odd' has 250 members, under the minimum of 300 profiles per \
             segment of LinkedIn Ads; runs will be skipped"
        );
        d.profile_limit = 1;
        assert_eq!(
            warnings(&d, &segment("two", "Two", Contact, 2))[0].1,
            "segment 'Two' has 2 members, over the limit of 1 profile per segment of this connection; \
             runs will be skipped"
        );
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1_000), "1,000");
        assert_eq!(group_thousands(100_000), "100,000");
        assert_eq!(group_thousands(1_234_567), "1,234,567");
        assert_eq!(group_thousands(-1_234), "-1,234");
        assert_eq!(group_thousands(i64::MIN), "-9,223,372,036,854,775,808");
    }
}
