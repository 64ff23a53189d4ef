// Package deploy holds the install manifests of the mesh: the kustomization (kubectl apply
// --server-side -k deploy/), the per-component manifests it lists, which the end-to-end tests
// apply one by one, and the Helm chart in charts/ambient, which renders the same objects. It
// has no Go code of its own and must not grow any: deploy_test.go (build tag e2e) checks that
// the chart and the kustomization agree.
package deploy
