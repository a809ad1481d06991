// Agreement between docker-compose.yml and the local stack (dev/): the same ports, the same
// Kafka, Connect and registry settings, the same Connect topics, connector configs that find every
// variable they reference, every paystream process that monitoring/prometheus.yml scrapes, traces
// exported to a Jaeger of dev's release, and a Dockerfile that copies every workspace member.
// Each rule reads its expected values from the dev/ file that owns them, so a change to dev/ that
// compose does not follow fails here instead of in somebody's `docker compose up`.

package main

import (
	"bufio"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"
	yaml "go.yaml.in/yaml/v4"
)

// jaegerV2Release maps dev's Jaeger (the Go module version dev/install builds, JAEGER_VERSION in
// dev/lib.sh) to the v2 image tag of the same release (Jaeger's CHANGELOG: "v1.76.0 / v2.13.0").
// A new JAEGER_VERSION needs its row here, so compose cannot silently run another release.
var jaegerV2Release = map[string]string{
	"v1.76.0": "2.13.0",
}

// jaegerImage is the repository of Jaeger v2's all-in-one image.
const jaegerImage = "jaegertracing/jaeger"

// paystreamImage is the image every paystream process runs (built from the Dockerfile).
const paystreamImage = "paystream:dev"

// untracedCommands are the paystream subcommands that export no spans (cli/src/main.rs
// `traced_service`): one-shot operator commands, run here by paystream-init.
var untracedCommands = map[string]bool{"migrate": true, "topics": true, "schemas": true, "connect": true}

// kafkaNotMirrored are the broker settings compose sets differently on purpose (two listeners, a
// static voter set, the image's data directory; see the kafka service's comment).
var kafkaNotMirrored = map[string]bool{
	"listeners": true, "advertised.listeners": true, "controller.quorum.bootstrap.servers": true,
	"inter.broker.listener.name": true, "listener.security.protocol.map": true, "log.dirs": true,
}

// connectNamedVariables are the worker settings Debezium's Connect image takes under names of
// its own (it overwrites CONNECT_* ones for these); every other setting a.b is CONNECT_A_B.
var connectNamedVariables = map[string]string{
	"group.id":                 "GROUP_ID",
	"config.storage.topic":     "CONFIG_STORAGE_TOPIC",
	"offset.storage.topic":     "OFFSET_STORAGE_TOPIC",
	"status.storage.topic":     "STATUS_STORAGE_TOPIC",
	"key.converter":            "KEY_CONVERTER",
	"value.converter":          "VALUE_CONVERTER",
	"offset.flush.interval.ms": "OFFSET_FLUSH_INTERVAL_MS",
	"rest.advertised.port":     "ADVERTISED_PORT",
}

// connectNotMirrored are worker settings whose value is an address or a path on this machine.
var connectNotMirrored = map[string]bool{
	"bootstrap.servers": true, "listeners": true, "rest.advertised.host.name": true, "plugin.path": true,
}

// registryMirrored are the registry settings compose must give the same value (the others are
// hosts, the JDBC URL's host and pool sizes).
var registryMirrored = []string{
	"quarkus.http.port", "quarkus.management.port", "apicurio.storage.kind", "apicurio.storage.sql.kind",
	"apicurio.datasource.username", "apicurio.datasource.password", "apicurio.rules.global.compatibility",
}

// checkAgreement runs every rule of this file; repo is the directory holding the compose file.
func checkAgreement(r *report, repo string, project *types.Project) {
	devVars, err := shellAssignments(filepath.Join(repo, "dev/lib.sh"))
	if err != nil {
		r.fail("dev/lib.sh: %v", err)
		return
	}
	kafka := mustProperties(r, repo, "dev/config/kafka-server.properties")
	connect := mustProperties(r, repo, "dev/config/connect-worker.properties")
	registry := mustProperties(r, repo, "dev/config/registry.properties")
	if kafka == nil || connect == nil || registry == nil {
		return
	}
	checkDevHostPorts(r, repo, project, devVars, kafka, connect, registry)
	checkKafkaSettings(r, project, kafka)
	checkConnectSettings(r, project, connect)
	checkRegistrySettings(r, project, registry, devVars)
	checkConnectorVariables(r, repo, project)
	checkScrapedProcesses(r, repo, project)
	checkTracing(r, project, devVars)
	checkDockerfileMembers(r, repo)
}

// checkDevHostPorts: every address of the local stack is published by the compose service that
// plays its part, on the same host port.
func checkDevHostPorts(r *report, repo string, project *types.Project, devVars, kafka, connect, registry map[string]string) {
	expected := map[string][]int{}
	add := func(service, source, address string) {
		port, err := portOf(address)
		if err != nil {
			r.fail("dev port of %s (%s): %v", service, source, err)
			return
		}
		expected[service] = append(expected[service], port)
	}
	add("postgres", "dev/lib.sh PG_PORT", ":"+devVars["PG_PORT"])
	add("kafka", "kafka-server.properties advertised.listeners", kafka["advertised.listeners"])
	add("connect", "connect-worker.properties listeners", connect["listeners"])
	add("registry", "registry.properties quarkus.http.port", ":"+registry["quarkus.http.port"])
	add("prometheus", "dev/lib.sh PROMETHEUS_URL", devVars["PROMETHEUS_URL"])
	add("jaeger", "dev/lib.sh JAEGER_UI_URL", devVars["JAEGER_UI_URL"])
	add("jaeger", "dev/lib.sh JAEGER_OTLP_HTTP_URL", devVars["JAEGER_OTLP_HTTP_URL"])
	if jaeger, err := yamlFile(filepath.Join(repo, "dev/config/jaeger.yaml")); err != nil {
		r.fail("dev/config/jaeger.yaml: %v", err)
	} else {
		add("jaeger", "jaeger.yaml OTLP gRPC", str(dig(jaeger, "receivers", "otlp", "protocols", "grpc", "endpoint")))
		add("jaeger", "jaeger.yaml OTLP/HTTP", str(dig(jaeger, "receivers", "otlp", "protocols", "http", "endpoint")))
		add("jaeger", "jaeger.yaml query", str(dig(jaeger, "extensions", "jaeger_query", "http", "endpoint")))
	}
	// The processes people call from the host: the API and the simulator (monitoring/prometheus.yml).
	if scraped, err := scrapedTargets(filepath.Join(repo, "monitoring/prometheus.yml")); err != nil {
		r.fail("monitoring/prometheus.yml: %v", err)
	} else {
		for _, process := range []string{"api", "provider-sim"} {
			add("paystream-"+process, "monitoring/prometheus.yml "+process, scraped[process])
		}
	}
	services := make([]string, 0, len(expected))
	for service := range expected {
		services = append(services, service)
	}
	sort.Strings(services)
	for _, name := range services {
		service, err := project.GetService(name)
		if err != nil {
			r.fail("dev ports of %s: no such compose service", name)
			continue
		}
		published := map[int]bool{}
		for _, port := range service.Ports {
			if first, last, err := portRange(port.Published); err == nil {
				for p := first; p <= last && first > 0; p++ {
					published[p] = true
				}
			}
		}
		seen := map[int]bool{}
		for _, port := range expected[name] {
			if seen[port] {
				continue
			}
			seen[port] = true
			if published[port] {
				r.ok("dev port %d: published by %s as on the local stack", port, name)
			} else {
				r.fail("dev port %d: the local stack serves %s there, compose's %s does not publish it", port, name, name)
			}
		}
	}
}

// checkKafkaSettings: each broker setting of dev/config is the kafka service's KAFKA_* variable.
func checkKafkaSettings(r *report, project *types.Project, kafka map[string]string) {
	env := serviceEnv(r, project, "kafka")
	if env == nil {
		return
	}
	for _, key := range sortedKeys(kafka) {
		if kafkaNotMirrored[key] {
			continue
		}
		compareSetting(r, "kafka", "kafka-server.properties", key, kafka[key], env, "KAFKA_"+envName(key))
	}
}

// checkConnectSettings: the worker's settings, its group and its three topics are connect's.
func checkConnectSettings(r *report, project *types.Project, connect map[string]string) {
	env := serviceEnv(r, project, "connect")
	if env == nil {
		return
	}
	for _, key := range sortedKeys(connect) {
		if connectNotMirrored[key] {
			continue
		}
		variable, named := connectNamedVariables[key]
		if !named {
			variable = "CONNECT_" + envName(key)
		}
		compareSetting(r, "connect", "connect-worker.properties", key, connect[key], env, variable)
	}
}

// checkRegistrySettings: the registry's storage, ports and rule, and every registry URL of compose
// (paystream's, Connect's, the Kafka UI's) at dev's Confluent-API path on the registry service.
func checkRegistrySettings(r *report, project *types.Project, registry, devVars map[string]string) {
	env := serviceEnv(r, project, "registry")
	if env == nil {
		return
	}
	for _, key := range registryMirrored {
		compareSetting(r, "registry", "registry.properties", key, registry[key], env, envName(key))
	}
	devURL, err := url.Parse(devVars["REGISTRY_URL"])
	if err != nil || devURL.Path == "" {
		r.fail("dev/lib.sh REGISTRY_URL %q has no path", devVars["REGISTRY_URL"])
		return
	}
	want := "http://registry:" + registry["quarkus.http.port"] + devURL.Path
	for _, name := range sortedServiceNames(project) {
		for _, variable := range sortedKeys(plainEnv(project.Services[name].Environment)) {
			if !strings.Contains(variable, "SCHEMA_REGISTRY") && !strings.Contains(variable, "SCHEMAREGISTRY") {
				continue
			}
			value := *project.Services[name].Environment[variable]
			if value == want {
				r.ok("registry URL %s %s: %s (dev's path)", name, variable, value)
			} else {
				r.fail("registry URL %s %s: %q, want %q (the registry service at dev's REGISTRY_URL path)", name, variable, value, want)
			}
		}
	}
}

// envReference is a connector config's `${env:NAME}`, resolved by Connect's env config provider.
var envReference = regexp.MustCompile(`\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}`)

// checkConnectorVariables: the connectors paystream-init applies (connect/*.json, the same files
// dev/up applies) find every variable they reference in the connect service's environment.
func checkConnectorVariables(r *report, repo string, project *types.Project) {
	env := serviceEnv(r, project, "connect")
	if env == nil {
		return
	}
	files, err := filepath.Glob(filepath.Join(repo, "connect", "*.json"))
	if err != nil || len(files) == 0 {
		r.fail("connector configs: no connect/*.json (%v)", err)
		return
	}
	for _, file := range files {
		text, err := os.ReadFile(file)
		if err != nil {
			r.fail("connector %s: %v", filepath.Base(file), err)
			continue
		}
		missing := []string{}
		names := map[string]bool{}
		for _, match := range envReference.FindAllStringSubmatch(string(text), -1) {
			names[match[1]] = true
		}
		for _, name := range sortedKeys(names) {
			if _, ok := env[name]; !ok {
				missing = append(missing, name)
			}
		}
		if len(missing) > 0 {
			r.fail("connector %s: connect does not set %s", filepath.Base(file), strings.Join(missing, ", "))
		} else {
			r.ok("connector %s: connect sets its %d variable(s)", filepath.Base(file), len(names))
		}
	}
	init, err := project.GetService("paystream-init")
	if err != nil {
		r.fail("connector configs: no paystream-init service applies them")
		return
	}
	if strings.Contains(strings.Join(init.Command, " "), "paystream connect apply --dir /app/connect") {
		r.ok("connector configs: paystream-init applies /app/connect (the Dockerfile's copy of connect/)")
	} else {
		r.fail("connector configs: paystream-init does not run `paystream connect apply --dir /app/connect`")
	}
}

// checkScrapedProcesses: every paystream process the local Prometheus scrapes runs in compose as
// paystream-<process>, listens on the same port, and the compose Prometheus scrapes it there.
func checkScrapedProcesses(r *report, repo string, project *types.Project) {
	local, err := scrapedTargets(filepath.Join(repo, "monitoring/prometheus.yml"))
	if err != nil {
		r.fail("monitoring/prometheus.yml: %v", err)
		return
	}
	composed, err := scrapedTargets(filepath.Join(repo, "monitoring/prometheus-compose.yml"))
	if err != nil {
		r.fail("monitoring/prometheus-compose.yml: %v", err)
		return
	}
	for _, process := range sortedKeys(local) {
		port, err := portOf(local[process])
		if err != nil {
			r.fail("process %s: target %q: %v", process, local[process], err)
			continue
		}
		name := "paystream-" + process
		service, err := project.GetService(name)
		if err != nil {
			r.fail("process %s: monitoring/prometheus.yml scrapes it, compose has no service %s", process, name)
			continue
		}
		if want := fmt.Sprintf("%s:%d", name, port); composed[process] != want {
			r.fail("process %s: prometheus-compose.yml scrapes %q, want %q", process, composed[process], want)
			continue
		}
		if !listensOn(service, port) {
			r.fail("process %s: %s sets no listen address on port %d (a *_LISTEN variable or --listen)", process, name, port)
			continue
		}
		r.ok("process %s: %s listens on %d, scraped there as on the local stack", process, name, port)
	}
}

// checkTracing: Jaeger is dev's release, and every traced paystream process exports to it and
// starts after it.
func checkTracing(r *report, project *types.Project, devVars map[string]string) {
	jaeger, err := project.GetService("jaeger")
	if err != nil {
		r.fail("jaeger: no jaeger service")
		return
	}
	release, known := jaegerV2Release[devVars["JAEGER_VERSION"]]
	switch {
	case !known:
		r.fail("jaeger: dev/lib.sh JAEGER_VERSION %q has no v2 release in compose-check's jaegerV2Release", devVars["JAEGER_VERSION"])
	case jaeger.Image != jaegerImage+":"+release:
		r.fail("jaeger: image %s, want %s:%s (dev's %s)", jaeger.Image, jaegerImage, release, devVars["JAEGER_VERSION"])
	default:
		r.ok("jaeger: %s is dev's %s", jaeger.Image, devVars["JAEGER_VERSION"])
	}
	otlpPort, err := portOf(devVars["JAEGER_OTLP_HTTP_URL"])
	if err != nil {
		r.fail("dev/lib.sh JAEGER_OTLP_HTTP_URL: %v", err)
		return
	}
	want := fmt.Sprintf("http://jaeger:%d", otlpPort)
	for _, name := range sortedServiceNames(project) {
		service := project.Services[name]
		if service.Image != paystreamImage || len(service.Command) == 0 || untracedCommands[service.Command[0]] ||
			service.Command[0] == "sh" || len(service.Entrypoint) > 0 {
			continue
		}
		value := service.Environment["OTEL_EXPORTER_OTLP_ENDPOINT"]
		if value == nil || *value != want {
			r.fail("traces %s: OTEL_EXPORTER_OTLP_ENDPOINT is not %s", name, want)
			continue
		}
		if _, after := service.DependsOn["jaeger"]; !after {
			r.fail("traces %s: exports to Jaeger but does not depend on it", name)
			continue
		}
		r.ok("traces %s: exported to %s, started after jaeger", name, want)
	}
}

// checkDockerfileMembers: `docker compose build` compiles the whole workspace, so the Dockerfile
// must copy every member of Cargo.toml.
func checkDockerfileMembers(r *report, repo string) {
	cargo, err := os.ReadFile(filepath.Join(repo, "Cargo.toml"))
	if err != nil {
		r.fail("Cargo.toml: %v", err)
		return
	}
	match := regexp.MustCompile(`(?m)^members\s*=\s*\[([^\]]*)\]`).FindSubmatch(cargo)
	if match == nil {
		r.fail("Cargo.toml: no workspace members")
		return
	}
	dockerfile, err := os.ReadFile(filepath.Join(repo, "Dockerfile"))
	if err != nil {
		r.fail("Dockerfile: %v", err)
		return
	}
	for _, quoted := range regexp.MustCompile(`"([^"]+)"`).FindAllSubmatch(match[1], -1) {
		member := string(quoted[1])
		copyLine := regexp.MustCompile(`(?m)^COPY\s+` + regexp.QuoteMeta(member) + `/\s+` + regexp.QuoteMeta(member) + `/\s*$`)
		if copyLine.Match(dockerfile) {
			r.ok("Dockerfile: copies workspace member %s", member)
		} else {
			r.fail("Dockerfile: no `COPY %s/ %s/` for workspace member %s (the build fails without it)", member, member, member)
		}
	}
}

// compareSetting reports whether compose's variable holds dev's value of key.
func compareSetting(r *report, service, file, key, want string, env map[string]string, variable string) {
	got, ok := env[variable]
	switch {
	case !ok:
		r.fail("setting %s %s=%s (%s): compose sets no %s", service, key, want, file, variable)
	case got != want:
		r.fail("setting %s %s: %s says %q, compose's %s %q", service, key, file, want, variable, got)
	default:
		r.ok("setting %s %s=%s as in %s", service, key, want, file)
	}
}

// listensOn: the service's environment or command gives a listen address on port.
func listensOn(service types.ServiceConfig, port int) bool {
	suffix := ":" + strconv.Itoa(port)
	for name, value := range service.Environment {
		if strings.HasSuffix(name, "_LISTEN") && value != nil && strings.HasSuffix(*value, suffix) {
			return true
		}
	}
	for i, arg := range service.Command {
		if arg == "--listen" && i+1 < len(service.Command) && strings.HasSuffix(service.Command[i+1], suffix) {
			return true
		}
	}
	return false
}

// scrapedTargets: process label → target of the scrape configs of a Prometheus configuration.
func scrapedTargets(path string) (map[string]string, error) {
	document, err := yamlFile(path)
	if err != nil {
		return nil, err
	}
	targets := map[string]string{}
	jobs, _ := dig(document, "scrape_configs").([]any)
	for _, job := range jobs {
		statics, _ := dig(job, "static_configs").([]any)
		for _, static := range statics {
			process := str(dig(static, "labels", "process"))
			list, _ := dig(static, "targets").([]any)
			if process != "" && len(list) == 1 {
				targets[process] = str(list[0])
			}
		}
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("no target with a process label")
	}
	return targets, nil
}

func yamlFile(path string) (any, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var document any
	if err := yaml.Unmarshal(text, &document); err != nil {
		return nil, err
	}
	return document, nil
}

// dig follows map keys through a decoded YAML document; nil when a key is missing.
func dig(node any, keys ...string) any {
	for _, key := range keys {
		mapping, ok := node.(map[string]any)
		if !ok {
			return nil
		}
		node = mapping[key]
	}
	return node
}

func str(node any) string {
	if node == nil {
		return ""
	}
	return fmt.Sprint(node)
}

// portOf reads the port of "host:port", "scheme://host:port/path" or a listener list's first entry.
func portOf(address string) (int, error) {
	address = strings.TrimSpace(strings.Split(address, ",")[0])
	if i := strings.Index(address, "://"); i >= 0 {
		address = address[i+3:]
	}
	address = strings.SplitN(address, "/", 2)[0]
	i := strings.LastIndex(address, ":")
	if i < 0 {
		return 0, fmt.Errorf("%q has no port", address)
	}
	return strconv.Atoi(address[i+1:])
}

// envName turns a property name into the variable that carries it: dots and dashes to _, upper case.
func envName(key string) string {
	return strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(key))
}

// mustProperties reads a Java properties file of the repo (key=value lines, # comments).
func mustProperties(r *report, repo, rel string) map[string]string {
	file, err := os.Open(filepath.Join(repo, rel))
	if err != nil {
		r.fail("%s: %v", rel, err)
		return nil
	}
	defer file.Close()
	properties := map[string]string{}
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		line := strings.TrimSpace(scanner.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if key, value, ok := strings.Cut(line, "="); ok {
			properties[strings.TrimSpace(key)] = strings.TrimSpace(value)
		}
	}
	if err := scanner.Err(); err != nil {
		r.fail("%s: %v", rel, err)
		return nil
	}
	return properties
}

// shellAssignment is a plain `NAME=value` line of a shell script (no export, no expansion).
var shellAssignment = regexp.MustCompile(`^([A-Z_][A-Z0-9_]*)=([^$"'\s]*)$`)

// shellAssignments reads the constant assignments of a shell script (dev/lib.sh's addresses).
func shellAssignments(path string) (map[string]string, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	values := map[string]string{}
	for _, line := range strings.Split(string(text), "\n") {
		if match := shellAssignment.FindStringSubmatch(strings.TrimSpace(line)); match != nil {
			values[match[1]] = match[2]
		}
	}
	for _, name := range []string{"PG_PORT", "REGISTRY_URL", "PROMETHEUS_URL", "JAEGER_VERSION", "JAEGER_UI_URL", "JAEGER_OTLP_HTTP_URL"} {
		if values[name] == "" {
			return nil, fmt.Errorf("no constant %s=... line", name)
		}
	}
	return values, nil
}

// serviceEnv is a compose service's environment with its values (nil, and a failure, if absent).
func serviceEnv(r *report, project *types.Project, name string) map[string]string {
	service, err := project.GetService(name)
	if err != nil {
		r.fail("service %s: %v", name, err)
		return nil
	}
	return plainEnv(service.Environment)
}

func plainEnv(environment types.MappingWithEquals) map[string]string {
	env := map[string]string{}
	for name, value := range environment {
		if value != nil {
			env[name] = *value
		}
	}
	return env
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for key := range m {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	return keys
}

func sortedServiceNames(project *types.Project) []string {
	return sortedKeys(project.Services)
}
