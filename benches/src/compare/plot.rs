//! The PNG plot of throughput against clients, from the saved put and range
//! results (`results/put.json`, `results/range.json`): one panel for puts,
//! one for linearizable reads through the leader, a line per system and
//! cluster size. Drawn with plotters' bitmap backend; the font is read at run
//! time from Debian's fonts-dejavu-core (or `$KEEL_BENCH_FONT`).

use std::path::PathBuf;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::compare::results::{ResultsFile, ScenarioReport};

const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

struct Series {
    label: String,
    color: RGBColor,
    triangle: bool,
    points: Vec<(f64, f64)>,
}

fn register_sans_font() -> anyhow::Result<()> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("KEEL_BENCH_FONT")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.extend(FONT_PATHS.iter().map(PathBuf::from));
    let path = candidates.iter().find(|p| p.is_file()).with_context(|| {
        format!("no TrueType font found in {candidates:?} (apt-get install fonts-dejavu-core)")
    })?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{} is not a usable font", path.display()))
}

fn series(report: Option<&ScenarioReport>, metric: &str, case_prefix: &str) -> Vec<Series> {
    let Some(report) = report else {
        return Vec::new();
    };
    let styles = [
        ("etcd", 1, RGBColor(120, 160, 230), false),
        ("etcd", 3, RGBColor(20, 60, 170), true),
        ("keel", 1, RGBColor(240, 150, 80), false),
        ("keel", 3, RGBColor(190, 40, 20), true),
    ];
    styles
        .iter()
        .filter_map(|&(system, size, color, triangle)| {
            let mut points: Vec<(f64, f64)> = report
                .rows
                .iter()
                .filter(|row| row.size == size && row.metric == metric && row.case.starts_with(case_prefix))
                .filter_map(|row| {
                    let value = if system == "etcd" { row.etcd } else { row.keel };
                    Some((row.clients? as f64, value?))
                })
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (!points.is_empty()).then(|| Series {
                label: format!("{system}, {size} member{}", if size == 1 { "" } else { "s" }),
                color,
                triangle,
                points,
            })
        })
        .collect()
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    y_label: &str,
    lines: &[Series],
) -> anyhow::Result<()> {
    let y_max = lines
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d((0.8f64..400f64).log_scale(), 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("concurrent clients (log scale)")
        .y_desc(y_label)
        .x_labels(10)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    if lines.is_empty() {
        chart.draw_series(std::iter::once(Text::new(
            "no data yet",
            (10f64, y_max / 2.0),
            ("sans-serif", 20).into_font(),
        )))?;
    }
    for line in lines {
        let color = line.color;
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(3),
            ))?
            .label(line.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        if line.triangle {
            chart.draw_series(
                line.points
                    .iter()
                    .map(|&p| TriangleMarker::new(p, 7, color.filled())),
            )?;
        } else {
            chart.draw_series(line.points.iter().map(|&p| Circle::new(p, 5, color.filled())))?;
        }
    }
    if !lines.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    Ok(())
}

/// Draws `results/throughput.png` and returns the markdown that shows it.
pub fn draw(results: &ResultsFile) -> anyhow::Result<String> {
    register_sans_font()?;
    let dir = results.raw_dir();
    std::fs::create_dir_all(&dir)?;
    let png = dir.join("throughput.png");
    let put = results.load_raw("put");
    let range = results.load_raw("range");
    {
        let root = BitMapBackend::new(&png, (1400, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, 2));
        panel(
            &panels[0],
            "put (8 B keys, 256 B values)",
            "writes/s",
            &series(put.as_ref(), "writes/s", "clients="),
        )?;
        panel(
            &panels[1],
            "linearizable range through the leader",
            "reads/s",
            &series(range.as_ref(), "reads/s", "linearizable via leader"),
        )?;
        root.present()?;
    }
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dates: Vec<String> = [put.as_ref(), range.as_ref()]
        .into_iter()
        .flatten()
        .map(|r| format!("{} from {}", r.id, r.date))
        .collect();
    Ok(format!(
        "## Throughput against clients\n\n![throughput against clients]({dir_name}/throughput.png)\n\n\
         Medians from the put and range sections above ({}).\n",
        dates.join(", ")
    ))
}
