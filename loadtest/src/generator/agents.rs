//! User agents as CDN access logs show them: a few current browser builds carry most requests,
//! and versions, devices, in-app browsers, apps, bots and tools make a long tail of thousands of
//! distinct strings. (A handful of strings would flatter everything downstream: the column's
//! compression, dictionary sizes, ClickHouse's work per row.)
//!
//! The pool is the same for every seed: it is the world the traffic is drawn from, built once
//! per [`super::Generator`] from a fixed seed. Within a family, variants are drawn from its
//! version and device lists and weighted by a Zipf law in the order they were drawn; the draws
//! favour the front of each list, where the newest versions and commonest devices stand, so
//! those tend to lead.

use std::collections::HashSet;

use rand::distributions::WeightedIndex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Chrome major versions, newest first (the reduced UA carries only the major).
const CHROME: &[u32] = &[
    131, 130, 129, 128, 127, 126, 125, 124, 123, 122, 121, 120, 119, 116, 114, 109,
];
const FIREFOX: &[u32] = &[132, 131, 130, 128, 127, 125, 115, 102];
/// iOS versions as Safari writes them (`_` between parts), newest first.
const IOS: &[&str] = &[
    "18_1_1", "18_1", "18_0_1", "18_0", "17_6_1", "17_5_1", "17_4_1", "17_3_1", "17_1_2",
    "16_7_10", "16_6_1", "15_8_3",
];
const ANDROID: &[&str] = &["14", "13", "12", "11", "10", "9"];
const SAMSUNG_MODELS: &[&str] = &[
    "SM-S928B", "SM-S918B", "SM-S911B", "SM-A546B", "SM-A556B", "SM-A155F", "SM-G991B", "SM-G998B",
    "SM-A536B", "SM-A346B", "SM-F946B", "SM-A145R", "SM-M146B", "SM-X200",
];
const ANDROID_MODELS: &[&str] = &[
    "Pixel 8",
    "Pixel 7",
    "Pixel 7a",
    "Pixel 6",
    "SM-S918B",
    "SM-A546B",
    "2201117TG",
    "M2101K6G",
    "CPH2581",
    "V2207",
    "RMX3630",
    "moto g54 5G",
    "22111317PG",
    "LE2123",
    "SM-G991B",
];
const IPHONES: &[&str] = &[
    "iPhone16,2",
    "iPhone16,1",
    "iPhone15,3",
    "iPhone15,2",
    "iPhone14,5",
    "iPhone14,2",
    "iPhone13,2",
    "iPhone12,1",
    "iPhone14,7",
    "iPhone15,4",
];
const LOCALES: &[&str] = &[
    "en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "pt_BR", "ja_JP", "hi_IN",
];

/// One family: its share of requests, how many variants to draw, and how to draw one.
struct Family {
    share: f64,
    variants: usize,
    draw: fn(&mut ChaCha8Rng) -> String,
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    // Skewed to the front: the newest versions and the commonest devices come first.
    let a = rng.gen_range(0..items.len());
    let b = rng.gen_range(0..items.len());
    items[a.min(b)]
}

/// An Android build id as devices report it (`UP1A.231005.007`).
fn android_build(rng: &mut ChaCha8Rng) -> String {
    format!(
        "{}.{}.{:03}",
        pick(rng, &["UP1A", "TP1A", "TQ3A", "SP1A", "RKQ1"]),
        rng.gen_range(230_901..241_105),
        rng.gen_range(1..20)
    )
}

fn ios_dotted(ios: &str) -> String {
    ios.replace('_', ".")
}

/// Safari's `Version/` for an iOS version: its major and minor.
fn safari_version(ios: &str) -> String {
    let mut parts = ios.split('_');
    let major = parts.next().unwrap_or("17");
    let minor = parts.next().unwrap_or("0");
    format!("{major}.{minor}")
}

const FAMILIES: &[Family] = &[
    Family {
        share: 20.0,
        variants: 16,
        draw: |rng| {
            format!(
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{}.0.0.0 Safari/537.36",
                pick(rng, CHROME)
            )
        },
    },
    Family {
        share: 13.0,
        variants: 16,
        draw: |rng| {
            format!(
                "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{}.0.0.0 Mobile Safari/537.36",
                pick(rng, CHROME)
            )
        },
    },
    Family {
        share: 15.0,
        variants: 12,
        draw: |rng| {
            let ios = pick(rng, IOS);
            format!(
                "Mozilla/5.0 (iPhone; CPU iPhone OS {ios} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{} Mobile/15E148 Safari/604.1",
                safari_version(ios)
            )
        },
    },
    Family {
        share: 6.0,
        variants: 16,
        draw: |rng| {
            format!(
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{}.0.0.0 Safari/537.36",
                pick(rng, CHROME)
            )
        },
    },
    Family {
        share: 4.0,
        variants: 8,
        draw: |rng| {
            let version = pick(rng, &["18.1", "18.0", "17.6", "17.5", "17.4.1", "16.6"]);
            format!(
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{version} Safari/605.1.15"
            )
        },
    },
    Family {
        // Edge: the Chromium major, then Edge's own build and patch.
        share: 5.0,
        variants: 120,
        draw: |rng| {
            let major = pick(rng, CHROME);
            let build = 2200 + (major - 109) * 45 + rng.gen_range(0..30);
            format!(
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{major}.0.0.0 Safari/537.36 Edg/{major}.0.{build}.{}",
                rng.gen_range(20..120)
            )
        },
    },
    Family {
        share: 3.0,
        variants: 24,
        draw: |rng| {
            let v = pick(rng, FIREFOX);
            let os = pick(
                rng,
                &[
                    "Windows NT 10.0; Win64; x64",
                    "X11; Linux x86_64",
                    "Macintosh; Intel Mac OS X 10.15",
                    "X11; Ubuntu; Linux x86_64",
                ],
            );
            format!("Mozilla/5.0 ({os}; rv:{v}.0) Gecko/20100101 Firefox/{v}.0")
        },
    },
    Family {
        share: 3.0,
        variants: 200,
        draw: |rng| {
            let samsung = pick(rng, &[26, 25, 24, 23, 22]);
            format!(
                "Mozilla/5.0 (Linux; Android {}; SAMSUNG {}) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/{samsung}.0 Chrome/{}.0.0.0 Mobile Safari/537.36",
                pick(rng, &["14", "13", "12"]),
                pick(rng, SAMSUNG_MODELS),
                pick(rng, &[122, 121, 117, 115, 111])
            )
        },
    },
    Family {
        share: 2.0,
        variants: 12,
        draw: |rng| {
            let ios = pick(rng, IOS);
            format!(
                "Mozilla/5.0 (iPad; CPU OS {ios} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{} Mobile/15E148 Safari/604.1",
                safari_version(ios)
            )
        },
    },
    Family {
        // Facebook's in-app browser: app version, build, device, OS and locale in every string.
        share: 3.0,
        variants: 2500,
        draw: |rng| {
            let ios = pick(rng, IOS);
            let app = rng.gen_range(470..490);
            format!(
                "Mozilla/5.0 (iPhone; CPU iPhone OS {ios} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/{app}.0.0.{}.{};FBBV/{};FBDV/{};FBMD/iPhone;FBSN/iOS;FBSV/{};FBSS/3;FBID/phone;FBLC/{};FBOP/5;FBRV/0]",
                rng.gen_range(30..60),
                rng.gen_range(100..120),
                rng.gen_range(600_000_000..660_000_000u32),
                pick(rng, IPHONES),
                ios_dotted(ios),
                pick(rng, LOCALES)
            )
        },
    },
    Family {
        // Android WebViews inside apps: device model and build in every string.
        share: 2.5,
        variants: 600,
        draw: |rng| {
            format!(
                "Mozilla/5.0 (Linux; Android {}; {} Build/{}; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/{}.0.{}.{} Mobile Safari/537.36",
                pick(rng, ANDROID),
                pick(rng, ANDROID_MODELS),
                android_build(rng),
                pick(rng, CHROME),
                rng.gen_range(6000..6800),
                rng.gen_range(40..200)
            )
        },
    },
    Family {
        share: 3.0,
        variants: 60,
        draw: |rng| {
            let ios = pick(rng, IOS);
            let build = rng.gen_range(5100..5130);
            format!(
                "MyShop/{}.{}.{} (com.example.shop; build:{build}; iOS {}) Alamofire/5.9.0",
                build / 1000,
                build / 10 % 100,
                build % 10,
                ios_dotted(ios)
            )
        },
    },
    Family {
        share: 3.0,
        variants: 8,
        draw: |rng| {
            format!(
                "okhttp/{}",
                pick(
                    rng,
                    &[
                        "4.12.0",
                        "4.11.0",
                        "4.10.0",
                        "4.9.3",
                        "3.14.9",
                        "5.0.0-alpha.14"
                    ]
                )
            )
        },
    },
    Family {
        share: 3.0,
        variants: 12,
        draw: |rng| {
            let ios = pick(rng, IOS);
            format!(
                "AppleCoreMedia/1.0.0.{} (iPhone; U; CPU OS {ios} like Mac OS X; en_us)",
                pick(
                    rng,
                    &["22B91", "22A3370", "21G93", "21F90", "21E236", "20H350"]
                )
            )
        },
    },
    Family {
        share: 2.0,
        variants: 150,
        draw: |rng| {
            format!(
                "Dalvik/2.1.0 (Linux; U; Android {}; {} Build/{})",
                pick(rng, ANDROID),
                pick(rng, ANDROID_MODELS),
                android_build(rng)
            )
        },
    },
    Family {
        share: 2.5,
        variants: 12,
        draw: |rng| {
            format!(
                "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{}.0.6778.{} Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
                pick(rng, &[131, 130, 129]),
                rng.gen_range(60..110)
            )
        },
    },
    Family {
        share: 2.5,
        variants: 8,
        draw: |rng| {
            pick(
                rng,
                &[
                    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
                    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
                    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
                    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
                    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
                    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
                    "Twitterbot/1.0",
                    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
                ],
            )
            .to_string()
        },
    },
    Family {
        share: 3.5,
        variants: 16,
        draw: |rng| {
            pick(
                rng,
                &[
                    "curl/8.5.0",
                    "curl/7.81.0",
                    "curl/8.9.1",
                    "python-requests/2.31.0",
                    "python-requests/2.32.3",
                    "Go-http-client/2.0",
                    "Go-http-client/1.1",
                    "axios/1.7.7",
                    "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
                    "Wget/1.21.4",
                    "Apache-HttpClient/4.5.14 (Java/17.0.9)",
                    "Java/11.0.21",
                ],
            )
            .to_string()
        },
    },
];

/// The pool's strings, and their weights as a distribution.
pub(super) fn pool() -> (Vec<String>, WeightedIndex<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(0x75a9_e475);
    let mut agents = Vec::new();
    let mut weights = Vec::new();
    for family in FAMILIES {
        let mut seen = HashSet::new();
        // At most four draws per variant: a family with few combinations ends with fewer.
        let drawn: Vec<String> = (0..family.variants * 4)
            .map(|_| (family.draw)(&mut rng))
            .filter(|agent| seen.insert(agent.clone()))
            .take(family.variants)
            .collect();
        let zipf: Vec<f64> = (1..=drawn.len()).map(|k| 1.0 / k as f64).collect();
        let total: f64 = zipf.iter().sum();
        weights.extend(zipf.iter().map(|w| family.share * w / total));
        agents.extend(drawn);
    }
    let index = WeightedIndex::new(&weights).expect("positive weights");
    (agents, index)
}
