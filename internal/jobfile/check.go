package jobfile

import (
	"fmt"
	"maps"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

var (
	nameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
	portRE = regexp.MustCompile(`^[A-Za-z0-9_]+$`)
	envRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// limits gives the allowed range of a whole-number key.
func limits(key string) (min, max int64) {
	switch key {
	case "repeat":
		return 1, maxRepeat
	case "cores":
		return 1, maxCores
	case "gpus":
		return 0, maxGPUs
	case "max_running":
		return 1, maxRepeat
	}
	if strings.HasPrefix(key, "resources ") {
		return 0, maxResource
	}
	return 0, maxRetries // retries
}

// rangeMsg says what is wrong with n for key, or "" when it is in range;
// got is n as the user wrote it.
func rangeMsg(key string, n, min, max int64, got string) string {
	switch {
	case n < min:
		return fmt.Sprintf("%s must be a whole number >= %d, got %s", key, min, got)
	case n > max:
		return fmt.Sprintf("%s must be at most %d, got %s", key, max, got)
	}
	return ""
}

// check reports what is wrong with j, skipping values that failed to
// decode, and normalizes it: defaults for repeat and cores, clean paths.
func (j *Job) check(r *reporter, l *locs) {
	j.checkSweep(r, l)
	j.checkName(r, l)
	j.checkCommand(r, l)
	j.Repeat = count(r, l, "repeat", j.Repeat)
	j.Cores = count(r, l, "cores", j.Cores)
	if j.Retries != nil && l.ok("retries") {
		if msg := rangeMsg("retries", int64(*j.Retries), 0, maxRetries, strconv.Itoa(*j.Retries)); msg != "" {
			r.at(l.val("retries"), "%s", msg)
		}
	}
	if j.Timeout < 0 {
		r.at(l.val("timeout"), "timeout must not be negative, got %s", j.Timeout)
	}
	for _, k := range slices.Sorted(maps.Keys(j.Env)) {
		if !envRE.MatchString(k) {
			r.at(l.envKey(k), "env name %s must be letters, digits and \"_\", not starting with a digit", quote(k))
		}
		if strings.ContainsRune(j.Env[k], 0) {
			r.at(l.envKey(k), "env %s contains a NUL byte", k)
		}
	}
	checkPaths(r, l, "files", j.Files, "the job file's directory", false)
	checkPaths(r, l, "outputs", j.Outputs, "the work dir", true)
	for i, s := range j.Setup {
		if l.itemOK("setup", i) {
			j.checkText(r, l.item("setup", i), "setup", i, s)
		}
	}
	j.checkPorts(r, l)
	j.checkResources(r, l)
	if l.ok("node") {
		switch {
		case l.given("node") && j.Node == "":
			r.at(l.val("node"), "node must not be empty; leave it out to run on any node")
		case strings.ContainsRune(j.Node, 0):
			r.at(l.val("node"), "node contains a NUL byte")
		}
	}
	j.checkSize(r, l)
	if l.ok("max_running") && (j.MaxRunning != 0 || l.given("max_running")) {
		if msg := rangeMsg("max_running", int64(j.MaxRunning), 1, maxRepeat, strconv.Itoa(j.MaxRunning)); msg != "" {
			r.at(l.val("max_running"), "%s", msg)
		}
	}
	if l.ok("after") {
		for i, a := range j.After {
			if l.itemOK("after", i) && strings.ContainsRune(a, 0) {
				r.at(l.item("after", i), "%s contains a NUL byte", itemName("after", i))
			}
		}
	}
	if l.ok("workdir") {
		switch {
		case l.given("workdir") && j.Workdir == "":
			r.at(l.val("workdir"), "workdir must not be empty; leave it out for a fresh work dir")
		case strings.ContainsRune(j.Workdir, 0):
			r.at(l.val("workdir"), "workdir contains a NUL byte")
		case j.Workdir == "":
		case !filepath.IsAbs(j.Workdir):
			r.at(l.val("workdir"), "workdir %s must be an absolute path", quote(j.Workdir))
		default:
			j.Workdir = filepath.Clean(j.Workdir)
		}
	}
}

// reservedName tells the names of files in the results directory, where
// instance names become directories.
func reservedName(name string) bool {
	return name == "events.jsonl" || name == "summary.json"
}

func (j *Job) checkName(r *reporter, l *locs) {
	if !l.ok("name") {
		return
	}
	at := l.val("name")
	switch {
	case j.Name == "" && !l.given("name"):
		r.at(l.job, `missing "name"`)
	case j.Name == "":
		r.at(at, "name must not be empty")
	case !nameRE.MatchString(j.Name):
		r.at(at, `name %s must be letters, digits, "_", "." and "-"`, quote(j.Name))
	case j.Name == "." || j.Name == "..":
		r.at(at, "name %q is not allowed: instance names become directory names", j.Name)
	case len(j.Name) > maxNameLen:
		r.at(at, "name is %d characters long, at most %d are allowed", len(j.Name), maxNameLen)
	case j.Repeat <= 1 && reservedName(j.Name):
		r.at(at, "name %q is taken by a file in the results directory", j.Name)
	}
}

func (j *Job) checkCommand(r *reporter, l *locs) {
	hasCommand := j.Command != nil || l.given("command")
	hasShell := j.Shell != "" || l.given("shell")
	switch {
	case hasCommand && hasShell:
		at := l.val("shell")
		if at.before(l.val("command")) {
			at = l.val("command")
		}
		r.at(at, "give either command or shell, not both")
	case !hasCommand && !hasShell:
		r.at(l.job, `missing "command" (or "shell")`)
	}
	if hasCommand && l.ok("command") {
		if len(j.Command) == 0 {
			r.at(l.val("command"), "command must not be empty")
		}
		for i, a := range j.Command {
			if !l.itemOK("command", i) {
				continue
			}
			if i == 0 && a == "" {
				r.at(l.item("command", i), "command[0], the program, must not be empty")
				continue
			}
			j.checkText(r, l.item("command", i), "command", i, a)
		}
	}
	if hasShell && l.ok("shell") {
		if j.Shell == "" {
			r.at(l.val("shell"), "shell must not be empty")
		}
		j.checkText(r, l.val("shell"), "shell", -1, j.Shell)
	}
}

// checkText checks text that becomes part of the command line: it cannot
// hold NUL bytes (exec cannot pass them), its {port:NAME} must name a
// port of the job, because the agent only replaces those, and its other
// placeholders must be {index} or a parameter. s is the value of key, or
// its item i when i >= 0.
func (j *Job) checkText(r *reporter, at pos, key string, i int, s string) {
	what := key
	if i >= 0 {
		what = itemName(key, i)
	}
	if strings.ContainsRune(s, 0) {
		r.at(at, "%s contains a NUL byte", what)
	}
	for _, ph := range placeholders(s) {
		name, isPort := strings.CutPrefix(ph, "port:")
		if !isPort {
			if ph == "index" || slices.Contains(j.ParamNames(), ph) {
				continue
			}
			known := []string{"{index}"}
			for _, p := range j.ParamNames() {
				known = append(known, "{"+p+"}")
			}
			r.at(at, "%s uses {%s}, which is no placeholder of this job (it has %s); write {{%s}} for the braces themselves",
				what, ph, strings.Join(known, ", "), ph)
			continue
		}
		if slices.Contains(j.Ports, name) {
			continue
		}
		hint := ""
		for _, p := range j.Ports {
			if strings.EqualFold(p, name) {
				hint = fmt.Sprintf("; did you mean {port:%s}?", p)
			}
		}
		r.at(at, "%s uses {port:%s}, but %s is not listed in ports%s", what, name, quote(name), hint)
	}
}

// count checks a whole-number key and applies its default, 1, when the
// key is not given (in code: left 0).
func count(r *reporter, l *locs, key string, n int) int {
	if !l.ok(key) {
		return n
	}
	if n == 0 && !l.given(key) {
		return 1
	}
	min, max := limits(key)
	if msg := rangeMsg(key, int64(n), min, max, strconv.Itoa(n)); msg != "" {
		r.at(l.val(key), "%s", msg)
	}
	return n
}

// checkPaths checks relative paths (globs when glob) and cleans them.
func checkPaths(r *reporter, l *locs, key string, paths []string, base string, glob bool) {
	for i, p := range paths {
		if !l.itemOK(key, i) {
			continue
		}
		var problem string
		clean := path.Clean(p)
		switch {
		case p == "":
			problem = "must not be empty"
		case strings.ContainsRune(p, 0):
			problem = "contains a NUL byte"
		case path.IsAbs(p):
			problem = quote(p) + " must be relative to " + base
		case slices.Contains(strings.Split(p, "/"), ".."):
			problem = quote(p) + ` must not contain ".."`
		case clean == ".":
			problem = quote(p) + " names no file below " + base
		case glob && !validGlob(clean):
			problem = quote(p) + " is not a valid pattern"
		default:
			paths[i] = clean
			continue
		}
		r.at(l.item(key, i), "%s %s", itemName(key, i), problem)
	}
}

func validGlob(pattern string) bool {
	_, err := path.Match(pattern, "")
	return err == nil
}

func (j *Job) checkPorts(r *reporter, l *locs) {
	if !l.ok("ports") {
		return
	}
	first := make(map[string]string) // upper-cased name → name as first listed
	for i, p := range j.Ports {
		if !l.itemOK("ports", i) {
			continue
		}
		if !portRE.MatchString(p) {
			r.at(l.item("ports", i), `%s %s must be a name of letters, digits and "_"`, itemName("ports", i), quote(p))
			continue
		}
		env := strings.ToUpper(p)
		if prev, dup := first[env]; dup {
			r.at(l.item("ports", i), "%s %s repeats port %s: both would be DROVER_PORT_%s", itemName("ports", i), quote(p), quote(prev), env)
			continue
		}
		first[env] = p
	}
}

// checkNames checks that job and instance names are unique across a file.
// Only a single-instance job's name can equal another job's instance name
// (a job "a.0" and instance 0 of a job "a" repeated), since instance
// suffixes have no dots; that is checked without listing the instances,
// which can number millions.
func checkNames(r *reporter, jobs []Job, ls []*locs) {
	// at is where to report a clash: at the name, unless it came from an
	// anchor elsewhere (an alias or merge key), which other jobs share.
	at := func(i int) pos {
		if p := ls[i].val("name"); !p.before(ls[i].job) {
			return p
		}
		return ls[i].job
	}
	first := make(map[string]int) // name → index of its first job
	for i := range jobs {
		if !ls[i].ok("name") || !nameRE.MatchString(jobs[i].Name) {
			continue
		}
		name := jobs[i].Name
		if f, dup := first[name]; dup {
			r.at(at(i), "job name %s is already used at line %d", quote(name), at(f).line)
			continue
		}
		first[name] = i
	}
	for i := range jobs {
		name := jobs[i].Name
		if f, ok := first[name]; !ok || f != i || jobs[i].Repeat != 1 {
			continue
		}
		dot := strings.LastIndexByte(name, '.')
		if dot < 0 {
			continue
		}
		family, index := name[:dot], name[dot+1:]
		n, err := strconv.Atoi(index)
		if err != nil || strconv.Itoa(n) != index {
			continue
		}
		f, ok := first[family]
		if !ok || jobs[f].Repeat <= n {
			continue
		}
		// Report at whichever of the two comes later.
		if f < i {
			r.at(at(i), "job name %s is also the name of instance %d of job %s (line %d)", quote(name), n, quote(family), at(f).line)
		} else {
			r.at(at(f), "instance %d of job %s is named %s, like the job at line %d", n, quote(family), quote(name), at(i).line)
		}
	}
}

// checkSize refuses a job whose instances would pass more argv and env
// than a start can carry (MaxArgsEnvBytes). The last instance has the
// longest {index}; every parameter is taken at its longest value.
func (j *Job) checkSize(r *reporter, l *locs) {
	if !l.ok("command") || !l.ok("shell") || !l.ok("setup") || !l.ok("env") {
		return
	}
	last := j
	if j.Repeat < 1 {
		c := *j
		c.Repeat = 1
		last = &c
	}
	params := j.longestParams()
	args := ArgsEnvBytes(last.instance(last.Repeat-1, params).Args, nil)
	env := ArgsEnvBytes(nil, j.Env)
	for _, p := range params {
		env += len(p.EnvName()) + len(p.Value) + 2
	}
	if args+env <= MaxArgsEnvBytes {
		return
	}
	at := l.val("command")
	if j.Command == nil {
		at = l.val("shell")
	}
	if env > args {
		at = l.val("env")
	}
	r.at(at, "each instance would pass %s of command and env (%s command, %s env); at most %s can be passed to a process",
		SizeString(args+env), SizeString(args), SizeString(env), SizeString(MaxArgsEnvBytes))
}

// checkTotal refuses a file with more instances than a run can hold.
func checkTotal(r *reporter, jobs []Job, ls []*locs) {
	total := 0
	for i := range jobs {
		total += max(jobs[i].Repeat, 1)
		if total > MaxInstances {
			r.at(ls[i].val("repeat"), "the jobs up to this one have %d instances; a job file may have at most %d", total, MaxInstances)
			return
		}
	}
}
