package ca

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// Secret names.
const (
	// UserCASecret holds a user-supplied CA (Istio's plug-in CA layout); it wins when present.
	UserCASecret = "cacerts"
	// SelfSignedSecret holds the root istiod-lite generates on first start.
	SelfSignedSecret = "istio-ca-secret"
	rootValidity     = 10 * 365 * 24 * time.Hour
)

// LoadOrCreate returns the CA kept in namespace: the user's if there is one, else the self-signed
// root generated on an earlier start, else a new self-signed root, stored so that restarts and
// other replicas use the same one. Two replicas starting together race on Create; the loser
// reads the winner's root.
func LoadOrCreate(ctx context.Context, kube kubernetes.Interface, namespace, trustDomain string) (*Authority, error) {
	secrets := kube.CoreV1().Secrets(namespace)
	if s, err := secrets.Get(ctx, UserCASecret, metav1.GetOptions{}); err == nil {
		a, err := fromUserSecret(s)
		if err != nil {
			return nil, fmt.Errorf("secret %s/%s: %w", namespace, UserCASecret, err)
		}
		return a, nil
	} else if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("get secret %s/%s: %w", namespace, UserCASecret, err)
	}
	for range 2 {
		s, err := secrets.Get(ctx, SelfSignedSecret, metav1.GetOptions{})
		if err == nil {
			a, err := NewAuthority(s.Data[KeyCACert], s.Data[KeyCAKey], nil, nil)
			if err != nil {
				// Never overwrite a CA we cannot read: every issued certificate chains to it.
				return nil, fmt.Errorf("secret %s/%s: %w", namespace, SelfSignedSecret, err)
			}
			return a, nil
		}
		if !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("get secret %s/%s: %w", namespace, SelfSignedSecret, err)
		}
		certPEM, keyPEM, err := NewSelfSigned(trustDomain, rootValidity)
		if err != nil {
			return nil, err
		}
		_, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: SelfSignedSecret, Namespace: namespace},
			Type:       corev1.SecretTypeOpaque,
			Data:       map[string][]byte{KeyCACert: certPEM, KeyCAKey: keyPEM},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			continue // another replica won; read its root
		}
		if err != nil {
			return nil, fmt.Errorf("create secret %s/%s: %w", namespace, SelfSignedSecret, err)
		}
		return NewAuthority(certPEM, keyPEM, nil, nil)
	}
	return nil, fmt.Errorf("secret %s/%s: created concurrently but not readable", namespace, SelfSignedSecret)
}

// RootConfigMap is the ConfigMap, in every namespace, holding the roots for workloads.
const (
	RootConfigMap    = "istio-ca-root-cert"
	RootConfigMapKey = "root-cert.pem"
)

// PublishRoots writes the roots into RootConfigMap of namespace, creating or updating it; an
// up-to-date ConfigMap is left untouched. owner, when not nil, is set as the ConfigMap's owner
// (istiod-lite's own Namespace, cluster-scoped): when the installation's namespace is deleted,
// the garbage collector removes the ConfigMaps from every namespace, and uninstalling leaves
// nothing behind.
func PublishRoots(ctx context.Context, kube kubernetes.Interface, namespace, rootsPEM string, owner *metav1.OwnerReference) error {
	cms := kube.CoreV1().ConfigMaps(namespace)
	cm, err := cms.Get(ctx, RootConfigMap, metav1.GetOptions{})
	var owners []metav1.OwnerReference
	if owner != nil {
		owners = []metav1.OwnerReference{*owner}
	}
	switch {
	case apierrors.IsNotFound(err):
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: RootConfigMap, Namespace: namespace, OwnerReferences: owners},
			Data:       map[string]string{RootConfigMapKey: rootsPEM},
		}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create configmap %s/%s: %w", namespace, RootConfigMap, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("get configmap %s/%s: %w", namespace, RootConfigMap, err)
	case cm.Data[RootConfigMapKey] == rootsPEM && (owner == nil || hasOwner(cm, owner.UID)):
		return nil
	}
	cm = cm.DeepCopy()
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[RootConfigMapKey] = rootsPEM
	if owner != nil && !hasOwner(cm, owner.UID) {
		cm.OwnerReferences = append(cm.OwnerReferences, *owner)
	}
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update configmap %s/%s: %w", namespace, RootConfigMap, err)
	}
	return nil
}

func hasOwner(o metav1.Object, uid types.UID) bool {
	for _, r := range o.GetOwnerReferences() {
		if r.UID == uid {
			return true
		}
	}
	return false
}
