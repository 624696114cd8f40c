package main

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"strings"
)

// The chart is small multiples: one panel per scenario, each with its own
// zero-based scale (10 MiB downloads and 14-byte hellos do not share an
// axis), one bar per stack, and the exact median printed above each bar.

var (
	white     = color.RGBA{255, 255, 255, 255}
	ink       = color.RGBA{30, 30, 30, 255}
	grey      = color.RGBA{120, 120, 120, 255}
	panelLine = color.RGBA{210, 210, 210, 255}
)

var stackColors = map[string]color.RGBA{
	"berth":    {31, 119, 180, 255},
	"uwsgi":    {255, 127, 14, 255},
	"gunicorn": {44, 160, 44, 255},
}

const (
	panelW   = 300
	panelH   = 250
	margin   = 20
	headerH  = 96
	maxCols  = 4
	barScale = 2 // font scale of titles and values
)

// panelFigure is what one panel plots for a stack: value, its label, and
// whether the stack has a figure at all.
func panelFigure(sc scenarioSummary, s stackSummary) (float64, string, bool) {
	if s.Rounds == 0 {
		return 0, "FAILED", false
	}
	switch {
	case sc.Kind.perturbed():
		return 100 * s.Kept, fmt.Sprintf("%.0f%%", 100*s.Kept), true
	case sc.Kind.usesWrk():
		if s.RPS >= 10000 {
			return s.RPS, trimZeros(fmt.Sprintf("%.1f", s.RPS/1000)) + "K", true
		}
		return s.RPS, fmt.Sprintf("%.0f", s.RPS), true
	case sc.Kind == kindMemory:
		return s.PSSWorkersMiB, fmt.Sprintf("%.0f MIB", s.PSSWorkersMiB), true
	case sc.Kind == kindStartup:
		return s.StartupS, fmt.Sprintf("%.2f S", s.StartupS), true
	}
	return 0, "", false
}

// panelTitle is the panel's two lines: what, and which way is better.
func panelTitle(sc scenarioSummary) (string, string) {
	switch {
	case sc.Kind.perturbed():
		return sc.Name, "% OF STEADY REQ/S KEPT"
	case sc.Kind.usesWrk():
		return sc.Name, "REQ/S, HIGHER IS BETTER"
	case sc.Kind == kindMemory:
		return sc.Name, "PSS OF WORKERS, LOWER IS BETTER"
	case sc.Kind == kindStartup:
		return sc.Name, "SECONDS TO READY, LOWER IS BETTER"
	}
	return sc.Name, ""
}

func drawChart(w io.Writer, rep *report) error {
	n := len(rep.Scenarios)
	if n == 0 {
		return fmt.Errorf("no scenarios to draw")
	}
	cols := min(n, maxCols)
	rows := (n + cols - 1) / cols

	stacks := chartStacks(rep)
	names := make([]string, len(stacks))
	legendW := 0
	for i, s := range stacks {
		names[i] = stackLabel(s)
		legendW += 22 + textWidth(names[i], 2) + 30
	}
	title := strings.Join(names, " VS ")
	sub := fmt.Sprintf("MEDIANS OF %s ROUNDS, %d CPUS, %d WORKERS EACH, WRK %s",
		rep.Settings["repeat"], rep.Machine.CPUs, atoiOr(rep.Settings["workers"]), strings.Split(rep.Settings["wrk"], " --")[0])
	width := 2*margin + max(cols*panelW, textWidth(title, 2), textWidth(sub, 1), legendW)
	height := headerH + rows*panelH + margin
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	fillRect(img, 0, 0, width, height, white)
	drawText(img, margin, margin, title, 2, ink)
	drawText(img, margin, margin+24, sub, 1, grey)
	x := margin
	for _, s := range stacks {
		fillRect(img, x, margin+44, x+16, margin+60, stackColors[s])
		drawText(img, x+22, margin+46, stackLabel(s), 2, ink)
		x += 22 + textWidth(stackLabel(s), 2) + 30
	}

	for i, sc := range rep.Scenarios {
		px := margin + (i%cols)*panelW
		py := headerH + (i/cols)*panelH
		drawPanel(img, px, py, sc)
	}
	return png.Encode(w, img)
}

// chartStacks are the stacks the legend names: every one that has a bar
// in some panel, not only the first panel's, which may be a scenario a
// peer sits out (https-h3 is berth's alone).
func chartStacks(rep *report) []string {
	var stacks []string
	for _, sc := range rep.Scenarios {
		for _, s := range sc.Stacks {
			if !contains(stacks, s.Stack) {
				stacks = append(stacks, s.Stack)
			}
		}
	}
	return stacks
}

func stackLabel(s string) string {
	if s == "berth" {
		return "berth"
	}
	return "nginx+" + s
}

func atoiOr(s string) int {
	var n int
	fmt.Sscan(s, &n)
	return n
}

func drawPanel(img *image.RGBA, px, py int, sc scenarioSummary) {
	// Frame.
	fillRect(img, px+4, py+4, px+panelW-4, py+5, panelLine)
	fillRect(img, px+4, py+panelH-5, px+panelW-4, py+panelH-4, panelLine)
	fillRect(img, px+4, py+4, px+5, py+panelH-4, panelLine)
	fillRect(img, px+panelW-5, py+4, px+panelW-4, py+panelH-4, panelLine)

	title, sub := panelTitle(sc)
	drawText(img, px+14, py+14, title, barScale, ink)
	drawText(img, px+14, py+34, sub, 1, grey)

	top, bottom := py+68, py+panelH-30
	maxV := 0.0
	for _, s := range sc.Stacks {
		if v, _, ok := panelFigure(sc, s); ok && v > maxV {
			maxV = v
		}
	}
	if sc.Kind.perturbed() && maxV < 100 {
		maxV = 100 // "kept" is read against the full bar
	}
	// Baseline.
	fillRect(img, px+14, bottom, px+panelW-14, bottom+1, ink)
	slot := (panelW - 28) / max(1, len(sc.Stacks))
	barW := slot * 3 / 5
	for j, s := range sc.Stacks {
		bx := px + 14 + j*slot + (slot-barW)/2
		v, label, ok := panelFigure(sc, s)
		h := 0
		if ok && maxV > 0 {
			h = int(float64(bottom-top) * v / maxV)
		}
		fillRect(img, bx, bottom-h, bx+barW, bottom, stackColors[s.Stack])
		lx := bx + barW/2 - textWidth(label, barScale)/2
		scale := barScale
		if textWidth(label, barScale) > slot-4 {
			scale = 1
			lx = bx + barW/2 - textWidth(label, 1)/2
		}
		drawText(img, lx, bottom-h-4-glyphH*scale, label, scale, ink)
		name := s.Stack
		drawText(img, bx+barW/2-textWidth(name, 1)/2, bottom+8, name, 1, ink)
	}
}
