// compose-check statically validates paystream's docker-compose.yml without a Docker engine.
//
//	go run . ../../docker-compose.yml        (dev/check-compose does this)
//
// It loads the file with compose-go, the library Docker Compose v2 itself uses, which checks
// it against the Compose Specification schema, interpolates it and checks its consistency
// (depends_on targets exist, named volumes are declared, ...). Interpolation is strict and
// deterministic: neither the caller's environment nor a .env file is read, and a variable
// without a default (`${VAR}`, `$VAR`) is an error, so the file passes or fails the same way on
// every machine. A required variable (`${VAR:?why}`), which whoever starts compose must set, is
// checked with a placeholder in its place. Then it checks paystream's own rules:
//   - a variable whose name contains SECRET has no default: a default would be published in the
//     repo, and the services refuse the repo's development secrets outside dev mode;
//   - every image has a pinned tag (or digest) that is not `latest`;
//   - every bind-mounted host path and every build context/Dockerfile exists inside the repo
//     (the directory holding the compose file);
//   - every `depends_on: condition: service_healthy` target defines a healthcheck;
//   - the host ports of the local stack are published: 5432, 9092, 8083, 8081;
//   - and compose agrees with dev/ (agree.go): ports, Kafka/Connect/registry settings, Connect's
//     topics, connector variables, the scraped processes, traces to Jaeger, the Dockerfile.
//
// It prints one line per check and exits 1 if any fails, 2 if the file does not load.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/template"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/distribution/reference"
)

// requiredHostPorts are the local stack's ports (dev/up) that compose must publish too.
var requiredHostPorts = []int{5432, 9092, 8083, 8081}

type report struct{ failed int }

func (r *report) ok(format string, args ...any) {
	fmt.Printf("ok    "+format+"\n", args...)
}

func (r *report) fail(format string, args ...any) {
	r.failed++
	fmt.Printf("FAIL  "+format+"\n", args...)
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-check PATH/TO/docker-compose.yml")
		os.Exit(2)
	}
	path, err := filepath.Abs(os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "compose-check: %v\n", err)
		os.Exit(2)
	}
	repo := filepath.Dir(path)

	project, err := load(path)
	if err != nil {
		fmt.Printf("FAIL  load %s: %v\n", path, err)
		os.Exit(2)
	}
	r := &report{}
	r.ok("load %s: schema, interpolation and consistency (%d services)", path, len(project.Services))
	checkVariables(r)

	names := make([]string, 0, len(project.Services))
	for name := range project.Services {
		names = append(names, name)
	}
	sort.Strings(names)

	for _, name := range names {
		checkImage(r, project.Services[name])
	}
	for _, name := range names {
		checkHostPaths(r, repo, project.Services[name])
	}
	for _, name := range names {
		checkHealthyDependencies(r, project, project.Services[name])
	}
	checkPublishedPorts(r, project, names)
	checkAgreement(r, repo, project)

	if r.failed > 0 {
		fmt.Printf("compose-check: %d check(s) failed\n", r.failed)
		os.Exit(1)
	}
	fmt.Println("compose-check: all checks passed")
}

// load parses, validates and interpolates the compose file the way `docker compose config`
// does, with every profile enabled so that no service escapes the checks.
func load(path string) (*types.Project, error) {
	options, err := cli.NewProjectOptions(
		[]string{path},
		cli.WithWorkingDirectory(filepath.Dir(path)),
		cli.WithProfiles([]string{"*"}),
		cli.WithResolvedPaths(true),
		cli.WithLoadOptions(func(o *loader.Options) {
			// Also applied while only reading the files, before interpolation is set up.
			if o.Interpolate != nil {
				o.Interpolate.Substitute = strictSubstitute
			}
		}),
	)
	if err != nil {
		return nil, err
	}
	return options.LoadProject(context.Background())
}

// variableUse is how the compose file refers to a variable: `${NAME<op>...}`.
var variableUse = regexp.MustCompile(`^\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-+?])?`)

// required and defaulted record, by name, the variables met while interpolating.
var (
	required  = map[string]string{}
	defaulted = map[string]bool{}
)

// strictSubstitute is compose's interpolation, except that a variable which is unset and has no
// default is an error instead of a warning and an empty string, and a required one
// (`${NAME:?why}`) is replaced by a placeholder and recorded.
func strictSubstitute(value string, mapping template.Mapping) (string, error) {
	return template.SubstituteWithOptions(value, mapping,
		template.WithoutLogging,
		template.WithReplacementFunction(func(sub string, m template.Mapping, cfg *template.Config) (string, error) {
			if use := variableUse.FindStringSubmatch(sub); use != nil && strings.Contains(use[2], "-") {
				defaulted[use[1]] = true
			}
			out, applied, err := template.DefaultReplacementAppliedFunc(sub, m, cfg)
			var missing *template.MissingRequiredError
			if errors.As(err, &missing) {
				required[missing.Variable] = missing.Reason
				return "placeholder-for-" + strings.ToLower(missing.Variable), nil
			}
			if err == nil && !applied {
				return "", fmt.Errorf("%s is not set and has no default (use ${NAME:-default} or ${NAME:?why})", sub)
			}
			return out, err
		}))
}

// checkVariables reports the required variables and refuses defaults for secrets.
func checkVariables(r *report) {
	names := make([]string, 0, len(required))
	for name := range required {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		r.ok("variable %s: required, set by whoever starts compose (%s)", name, required[name])
	}
	defaults := make([]string, 0, len(defaulted))
	for name := range defaulted {
		defaults = append(defaults, name)
	}
	sort.Strings(defaults)
	for _, name := range defaults {
		if strings.Contains(name, "SECRET") {
			r.fail("variable %s: a secret must not have a default in the repo; use ${%s:?why}", name, name)
		}
	}
}

func checkImage(r *report, service types.ServiceConfig) {
	check := "image " + service.Name
	if service.Image == "" {
		if service.Build != nil {
			r.ok("%s: built from %s, no registry image", check, service.Build.Context)
		} else {
			r.fail("%s: neither image nor build", check)
		}
		return
	}
	named, err := reference.ParseNormalizedNamed(service.Image)
	if err != nil {
		r.fail("%s: %q is not a valid image reference: %v", check, service.Image, err)
		return
	}
	if _, digested := named.(reference.Digested); digested {
		r.ok("%s: %s (pinned by digest)", check, service.Image)
		return
	}
	tagged, ok := named.(reference.Tagged)
	switch {
	case !ok:
		r.fail("%s: %s has no tag, which means latest; pin a version", check, service.Image)
	case tagged.Tag() == "latest":
		r.fail("%s: %s uses the latest tag; pin a version", check, service.Image)
	default:
		r.ok("%s: %s", check, service.Image)
	}
}

// checkHostPaths: bind mounts and build inputs must exist in the repo, so `docker compose up`
// does not create empty directories in their place or fail on another machine.
func checkHostPaths(r *report, repo string, service types.ServiceConfig) {
	for _, volume := range service.Volumes {
		if volume.Type != types.VolumeTypeBind {
			continue
		}
		checkRepoPath(r, repo, fmt.Sprintf("bind %s:%s", service.Name, volume.Target), volume.Source)
	}
	if service.Build != nil {
		context := service.Build.Context
		checkRepoPath(r, repo, "build "+service.Name+" context", context)
		if service.Build.DockerfileInline == "" {
			dockerfile := service.Build.Dockerfile
			if dockerfile == "" {
				dockerfile = "Dockerfile"
			}
			if !filepath.IsAbs(dockerfile) {
				dockerfile = filepath.Join(context, dockerfile)
			}
			checkRepoPath(r, repo, "build "+service.Name+" dockerfile", dockerfile)
		}
	}
}

func checkRepoPath(r *report, repo, check, path string) {
	if !filepath.IsAbs(path) {
		path = filepath.Join(repo, path)
	}
	rel, err := filepath.Rel(repo, path)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		r.fail("%s: %s is outside the repo %s", check, path, repo)
		return
	}
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			r.fail("%s: %s does not exist", check, rel)
		} else {
			r.fail("%s: %v", check, err)
		}
		return
	}
	r.ok("%s: %s exists", check, rel)
}

func checkHealthyDependencies(r *report, project *types.Project, service types.ServiceConfig) {
	targets := make([]string, 0, len(service.DependsOn))
	for target, dependency := range service.DependsOn {
		if dependency.Condition == types.ServiceConditionHealthy {
			targets = append(targets, target)
		}
	}
	sort.Strings(targets)
	for _, target := range targets {
		check := fmt.Sprintf("depends_on %s -> %s (service_healthy)", service.Name, target)
		dependency, err := project.GetService(target)
		if err != nil {
			r.fail("%s: %v", check, err)
			continue
		}
		health := dependency.HealthCheck
		if health == nil || health.Disable || len(health.Test) == 0 || health.Test[0] == "NONE" {
			r.fail("%s: %s defines no healthcheck, so it never becomes healthy", check, target)
			continue
		}
		r.ok("%s: %s has a healthcheck", check, target)
	}
}

func checkPublishedPorts(r *report, project *types.Project, names []string) {
	publishedBy := map[int]string{}
	for _, name := range names {
		for _, port := range project.Services[name].Ports {
			first, last, err := portRange(port.Published)
			if err != nil {
				r.fail("ports %s: published %q: %v", name, port.Published, err)
				continue
			}
			for p := first; p <= last && first > 0; p++ {
				publishedBy[p] = name
			}
		}
	}
	for _, port := range requiredHostPorts {
		if service, ok := publishedBy[port]; ok {
			r.ok("host port %d: published by %s", port, service)
		} else {
			r.fail("host port %d: not published by any service", port)
		}
	}
}

// portRange parses a published port: "", "5432" or "5432-5433".
func portRange(published string) (int, int, error) {
	if published == "" {
		return 0, 0, nil
	}
	lo, hi, isRange := strings.Cut(published, "-")
	first, err := strconv.Atoi(lo)
	if err != nil {
		return 0, 0, err
	}
	last := first
	if isRange {
		if last, err = strconv.Atoi(hi); err != nil {
			return 0, 0, err
		}
	}
	return first, last, nil
}
